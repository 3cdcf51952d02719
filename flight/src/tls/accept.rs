//! The server side of Manta's TLS transport: accepted connections, TLS or plain, as tonic's
//! server takes them.
//!
//! With TLS, an accept loop hands each new socket to a task of its own that wraps it in a read
//! buffer of [`SOCKET_READ_BUFFER`] bytes and completes the handshake within
//! [`HANDSHAKE_TIMEOUT`]; finished sessions reach tonic through a channel. A client that opens
//! a connection and never finishes its handshake therefore delays nobody and is dropped at the
//! deadline. The loop stops when the server drops the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use super::{SOCKET_READ_BUFFER, ServerIdentity, TLS_WRITE_QUEUE};

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the accept loop pauses after an error that is not about one connection (out of
/// file descriptors, say), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Sessions whose handshake finished but which tonic has not taken yet.
const READY_QUEUE: usize = 64;

/// One accepted connection: a TLS session over a buffered socket, or a plain socket.
#[derive(Debug)]
pub enum Connection {
    /// A plain TCP connection.
    Plain(TcpStream),
    /// A TLS session (boxed: it carries rustls's buffers).
    Tls(Box<TlsStream<BufReader<TcpStream>>>),
}

/// The connections `listener` accepts, with Nagle's algorithm off, as TLS sessions presenting
/// `tls` when given. (A tonic server fed by a plain listener stream never sets `TCP_NODELAY`;
/// a small reply then waits for the peer's delayed ACK, which made every small fetch take
/// 40 ms.) With TLS it must be called within a Tokio runtime: the accept loop is a task.
pub fn incoming(
    listener: TcpListener,
    tls: Option<&ServerIdentity>,
) -> Pin<Box<dyn Stream<Item = io::Result<Connection>> + Send>> {
    let Some(identity) = tls else {
        return TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(|accepted| accepted.map(Connection::Plain))
            .boxed();
    };
    let acceptor = TlsAcceptor::from(identity.config.clone());
    let (ready, sessions) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, acceptor, ready));
    tokio_stream::wrappers::ReceiverStream::new(sessions)
        .map(Ok)
        .boxed()
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<Connection>,
) {
    loop {
        let accepted = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                let (acceptor, ready) = (acceptor.clone(), ready.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&acceptor, socket))
                        .await
                    {
                        Ok(Ok(session)) => {
                            // An error means the server stopped: the session just closes.
                            let _ = ready.send(session).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(
                            %peer,
                            "no TLS handshake within {} s",
                            HANDSHAKE_TIMEOUT.as_secs()
                        ),
                    }
                });
            }
            Err(e) if about_one_connection(&e) => {}
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn handshake(acceptor: &TlsAcceptor, socket: TcpStream) -> io::Result<Connection> {
    socket.set_nodelay(true)?;
    let buffered = BufReader::with_capacity(SOCKET_READ_BUFFER, socket);
    let mut session = acceptor.accept(buffered).await?;
    session.get_mut().1.set_buffer_limit(Some(TLS_WRITE_QUEUE));
    Ok(Connection::Tls(Box::new(session)))
}

/// Whether an accept error concerns only the connection being accepted.
fn about_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

impl Connection {
    fn socket(&self) -> &TcpStream {
        match self {
            Self::Plain(socket) => socket,
            Self::Tls(session) => session.get_ref().0.get_ref(),
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        let socket = self.socket();
        TcpConnectInfo {
            local_addr: socket.local_addr().ok(),
            remote_addr: socket.peer_addr().ok(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(socket) => Pin::new(socket).poll_read(cx, buf),
            Self::Tls(session) => Pin::new(session.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(socket) => Pin::new(socket).poll_write(cx, buf),
            Self::Tls(session) => Pin::new(session.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(socket) => Pin::new(socket).poll_write_vectored(cx, bufs),
            Self::Tls(session) => Pin::new(session.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(socket) => socket.is_write_vectored(),
            Self::Tls(session) => session.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(socket) => Pin::new(socket).poll_flush(cx),
            Self::Tls(session) => Pin::new(session.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(socket) => Pin::new(socket).poll_shutdown(cx),
            Self::Tls(session) => Pin::new(session.as_mut()).poll_shutdown(cx),
        }
    }
}
