//! A Flight SQL endpoint for the context's SQL session, so that ADBC and JDBC drivers and
//! BI tools query Manta's tables directly.
//!
//! [`Context::serve_flight_sql`] binds an address and serves, on the context's runtime,
//! arrow-flight's Flight SQL protocol over the same DataFusion session that
//! [`Context::register`] and [`Context::sql`] use. The handles it gives clients carry their
//! statements (see [`handles`]); the only per-client state of the service ([`service`]) is
//! each client's session ([`sessions`]), an overlay of the shared catalog where what the
//! client creates or drops stays its own. It supports queries, prepared statements with parameters (`$1` or `?`), updates such as
//! `CREATE EXTERNAL TABLE` where the operator allows them ([`access`]), and the `GetCatalogs`, `GetDbSchemas`, `GetTables`,
//! `GetTableTypes` and `GetSqlInfo` metadata commands.
//!
//! ```no_run
//! let ctx = manta_datasets::Context::new(Default::default()).unwrap();
//! ctx.register_parquet("lineitem", "data/lineitem/").unwrap();
//! let server = ctx.serve_flight_sql("127.0.0.1:50051").unwrap();
//! println!("Flight SQL at {}", server.address());
//! // Clients present `authorization: Bearer <token>` (ADBC:
//! // `adbc.flight.sql.authorization_header`), or the token as a handshake's password.
//! let token = server.token().secret();
//! // ... clients query until the server is dropped or shut down.
//! ```

pub mod access;
pub mod handles;
pub mod nesting;
pub mod service;
pub mod sessions;

use std::net::SocketAddr;

use arrow_flight::flight_service_server::FlightServiceServer;
use manta_flight::auth::Token;
use tokio::sync::oneshot;

use crate::context::Context;
use crate::error::{Error, Result};
pub use access::SqlAccess;
pub use service::MantaFlightSql;

/// A running Flight SQL endpoint; it stops when shut down or dropped.
#[derive(Debug)]
pub struct FlightSqlServer {
    address: SocketAddr,
    token: Token,
    stop: Option<oneshot::Sender<()>>,
}

impl FlightSqlServer {
    /// Where clients connect (the bound address, with the port picked if 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The token clients present (`authorization: Bearer <token>`, or as the password of a
    /// handshake): the cluster's, or the one [`Config::token`](crate::Config::token) gave an
    /// embedded context, or else one made for this server.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// Stops accepting clients; calls in progress are cut off.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for FlightSqlServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// How a Flight SQL endpoint serves (see [`Context::serve_flight_sql_with`]).
#[derive(Clone, Debug, Default)]
pub struct FlightSqlOptions {
    /// What clients may change (default: nothing; they may only query).
    pub access: SqlAccess,
    /// Serve TLS with this certificate and key (default: plain).
    pub tls: Option<manta_flight::tls::ServerIdentity>,
}

impl Context {
    /// Serves this context's SQL tables to Flight SQL clients at `address` (`host:port`; port
    /// 0 picks a free one) until the returned server is dropped. Tables registered later are
    /// served too. Every call must present the server's [`FlightSqlServer::token`]. Clients
    /// may only query: see [`Context::serve_flight_sql_with`] to let them create tables.
    pub fn serve_flight_sql(&self, address: &str) -> Result<FlightSqlServer> {
        self.serve_flight_sql_with(address, FlightSqlOptions::default())
    }

    /// [`Context::serve_flight_sql`] with `options`: letting clients change what
    /// [`FlightSqlOptions::access`] allows (e.g. `CREATE EXTERNAL TABLE` and `COPY` under some
    /// directories), serving TLS.
    pub fn serve_flight_sql_with(
        &self,
        address: &str,
        options: FlightSqlOptions,
    ) -> Result<FlightSqlServer> {
        let FlightSqlOptions { access, tls } = options;
        let mut builder = tonic::transport::Server::builder();
        let bind_error = |source| Error::Io {
            action: "binding the Flight SQL endpoint at",
            path: address.into(),
            source,
        };
        let listener = self
            .block_on(tokio::net::TcpListener::bind(address))
            .map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        let token = self.token().cloned().unwrap_or_else(Token::generate);
        let service = manta_flight::auth::guard(
            FlightServiceServer::new(MantaFlightSql::new(
                self.sql_session(),
                token.clone(),
                access,
            )),
            &token,
        );
        let (stop, stopped) = oneshot::channel::<()>();
        self.spawn(async move {
            let served = builder
                .add_service(service)
                .serve_with_incoming_shutdown(
                    manta_flight::incoming(listener, tls.as_ref()),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
            if let Err(e) = served {
                tracing::error!("the Flight SQL endpoint at {bound} stopped: {e}");
            }
        });
        Ok(FlightSqlServer {
            address: bound,
            token,
            stop: Some(stop),
        })
    }
}
