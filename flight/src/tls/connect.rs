//! The client side of Manta's TLS transport: an endpoint whose connections are TLS sessions
//! over a buffered socket.
//!
//! tonic is given a connector ([`TlsConnector`]) that opens the TCP connection, wraps it in a
//! read buffer of [`SOCKET_READ_BUFFER`] bytes (rustls asks for a few KiB per read; the buffer
//! turns those into a few large `read` calls) and completes the handshake, all within the
//! endpoint's connect timeout. tonic itself sees an `http://` endpoint: the scheme only tells
//! it whether to add its own TLS, which this connector replaces.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{SOCKET_READ_BUFFER, TLS_WRITE_QUEUE};
use crate::client::tune_endpoint;

/// Where a client connects: a tonic endpoint with Manta's settings and, for an `https://`
/// address, the TLS session to open under it. Made by [`super::endpoint`].
#[derive(Clone, Debug)]
pub struct ClientEndpoint {
    endpoint: Endpoint,
    tls: Option<TlsConnector>,
}

impl ClientEndpoint {
    /// A plain endpoint for `uri`.
    pub(super) fn plain(uri: Uri) -> Self {
        Self {
            endpoint: tune_endpoint(Endpoint::from(uri)),
            tls: None,
        }
    }

    /// An endpoint for the `https://` address `uri`, speaking TLS configured by `config`.
    pub(super) fn tls(uri: Uri, config: Arc<ClientConfig>) -> Result<Self, String> {
        let host = uri
            .host()
            .ok_or("an https address without a host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| format!("{host} is not a name a certificate can be for ({e})"))?;
        let port = uri.port_u16().unwrap_or(443);
        let mut parts = uri.into_parts();
        parts.scheme = Some(tonic::codegen::http::uri::Scheme::HTTP);
        let uri = Uri::from_parts(parts).map_err(|e| format!("not a valid address ({e})"))?;
        Ok(Self {
            endpoint: tune_endpoint(Endpoint::from(uri)),
            tls: Some(TlsConnector {
                config,
                server_name,
                host,
                port,
            }),
        })
    }

    /// Whether connections made here speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The same endpoint, giving up on a connection (and its handshake) after `timeout`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.connect_timeout(timeout);
        self
    }

    /// Connects now.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            None => self.endpoint.connect().await,
            Some(tls) => self.endpoint.connect_with_connector(tls.clone()).await,
        }
    }

    /// A channel that connects on first use (and again after the connection is lost).
    pub fn connect_lazy(&self) -> Channel {
        match &self.tls {
            None => self.endpoint.connect_lazy(),
            Some(tls) => self.endpoint.connect_with_connector_lazy(tls.clone()),
        }
    }
}

/// Opens a TLS session to one server over a buffered TCP connection (a tower service, as
/// tonic's custom connectors are).
#[derive(Clone, Debug)]
struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<BufReader<TcpStream>>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let socket = TcpStream::connect((this.host.as_str(), this.port)).await?;
            socket.set_nodelay(true)?;
            let buffered = BufReader::with_capacity(SOCKET_READ_BUFFER, socket);
            let mut session = tokio_rustls::TlsConnector::from(this.config)
                .connect(this.server_name, buffered)
                .await?;
            session.get_mut().1.set_buffer_limit(Some(TLS_WRITE_QUEUE));
            Ok(TokioIo::new(session))
        })
    }
}
