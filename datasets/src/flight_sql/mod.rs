//! A Flight SQL endpoint for the context's SQL session, so that ADBC and JDBC drivers and
//! BI tools query Manta's tables directly.
//!
//! [`Context::serve_flight_sql`] binds an address and serves, on the context's runtime,
//! arrow-flight's Flight SQL protocol over the same DataFusion session that
//! [`Context::register`] and [`Context::sql`] use. The handles it gives clients carry
//! everything (see [`handles`]), so the service ([`service`]) keeps no per-client state. It
//! supports queries, prepared statements with parameters (`$1` or `?`), updates such as
//! `CREATE EXTERNAL TABLE`, and the `GetCatalogs`, `GetDbSchemas`, `GetTables`,
//! `GetTableTypes` and `GetSqlInfo` metadata commands.
//!
//! ```no_run
//! let ctx = manta_datasets::Context::new(Default::default()).unwrap();
//! ctx.register_parquet("lineitem", "data/lineitem/").unwrap();
//! let server = ctx.serve_flight_sql("127.0.0.1:50051").unwrap();
//! println!("Flight SQL at {}", server.address());
//! // ... clients query until the server is dropped or shut down.
//! ```

pub mod handles;
pub mod service;

use std::net::SocketAddr;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::sync::oneshot;

use crate::context::Context;
use crate::error::{Error, Result};
pub use service::MantaFlightSql;

/// A running Flight SQL endpoint; it stops when shut down or dropped.
#[derive(Debug)]
pub struct FlightSqlServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl FlightSqlServer {
    /// Where clients connect (the bound address, with the port picked if 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
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

impl Context {
    /// Serves this context's SQL tables to Flight SQL clients at `address` (`host:port`; port
    /// 0 picks a free one) until the returned server is dropped. Tables registered later are
    /// served too, and clients can add their own with `CREATE EXTERNAL TABLE`.
    pub fn serve_flight_sql(&self, address: &str) -> Result<FlightSqlServer> {
        let bind_error = |source| Error::Io {
            action: "binding the Flight SQL endpoint at",
            path: address.into(),
            source,
        };
        let listener = self
            .block_on(tokio::net::TcpListener::bind(address))
            .map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        let service = FlightServiceServer::new(MantaFlightSql::new(self.sql_session()));
        let (stop, stopped) = oneshot::channel::<()>();
        self.spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
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
            stop: Some(stop),
        })
    }
}
