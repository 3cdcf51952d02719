//! Binding, serving and stopping: what the head and the node daemon share.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use manta_flight::auth::{AuthChannel, Token, with_token};
use manta_flight::tls::ServerIdentity;
use tokio::net::TcpListener;

use crate::error::{Error, Result};

/// How long a connection attempt to the head or a node may take before it is an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `host:port` (port 0 picks a free port).
pub async fn bind(host: &str, port: u16) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((host, port))
        .await
        .map_err(|source| Error::Io {
            action: "binding",
            path: format!("{host}:{port}").into(),
            source,
        })?;
    let address = listener.local_addr().map_err(|source| Error::Io {
        action: "binding",
        path: host.into(),
        source,
    })?;
    Ok((listener, address))
}

/// A tonic server builder with Manta's transport settings (see `manta_flight::tune_endpoint`),
/// pinging its clients as they ping it, so that a dead client's calls end too. Serve it with
/// `manta_flight::incoming`, which speaks TLS when given an identity.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(manta_flight::client::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(manta_flight::client::KEEPALIVE_TIMEOUT))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(Some(manta_flight::client::MAX_FRAME_BYTES))
}

/// The scheme of this process's servers' addresses: `https` when serving `tls`.
pub fn scheme(tls: Option<&ServerIdentity>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

/// How long a stopping server waits for its open connections to close. Drivers keep pooled
/// connections open for as long as they live (a head serving Flight SQL runs one), so a
/// graceful shutdown alone could wait forever.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a tonic server until `stop` resolves, then lets it finish its open calls for at most
/// [`DRAIN_TIMEOUT`]. `serve` is given the stop signal for tonic's graceful shutdown.
pub async fn serve_until<E, F>(
    stop: impl Future<Output = ()> + Send,
    serve: impl FnOnce(BoxFuture<'static, ()>) -> F,
) -> std::result::Result<(), E>
where
    F: Future<Output = std::result::Result<(), E>>,
{
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        // An error means the sender was dropped: the server is gone anyway.
        let _ = stopped.await;
    }
    .boxed();
    let serving = serve(graceful);
    let deadline = async move {
        stop.await;
        let _ = stopping.send(());
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        result = serving => result,
        () = deadline => {
            tracing::info!("connections still open {DRAIN_TIMEOUT:?} after stopping; closing them");
            Ok(())
        }
    }
}

/// Resolves when the process is asked to stop (SIGTERM or SIGINT). The handlers are in place
/// when this returns, before the future is first polled: a process that says it is ready and
/// is stopped a moment later still stops cleanly (and removes what it must, such as its token
/// file) instead of dying of the signal's default action. Call it inside a tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("stopping");
    }
}

/// `host:port`, `http://host:port` or `https://host:port` as a URL: a bare `host:port` is
/// plain `http://` (a cluster serving TLS is addressed as `https://host:port`).
pub fn normalize_address(address: &str) -> String {
    let address = address.trim();
    if address.starts_with("http://") || address.starts_with("https://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// Connects to the head, failing within [`CONNECT_TIMEOUT`] with [`Error::HeadUnreachable`];
/// every call on the channel presents `token`.
pub async fn connect_head(address: &str, token: &Token) -> Result<AuthChannel> {
    let url = normalize_address(address);
    let unreachable = |reason: String| Error::HeadUnreachable {
        address: address.to_string(),
        reason,
    };
    let endpoint = manta_flight::tls::endpoint(&url)
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT);
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(with_token(channel, token)),
        Ok(Err(e)) => Err(unreachable(transport_reason(&e))),
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// A node's channel, connected on first use, presenting `token` on every call.
pub fn lazy_channel(address: &str, token: &Token) -> Result<AuthChannel> {
    let endpoint = manta_flight::tls::endpoint(&normalize_address(address)).map_err(|e| {
        Error::NodeUnreachable {
            address: address.to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(with_token(endpoint.connect_lazy(), token))
}

/// The innermost cause of a transport error ("Connection refused"), which is what a user needs.
pub fn transport_reason(error: &(dyn std::error::Error + 'static)) -> String {
    let mut source: &dyn std::error::Error = error;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}
