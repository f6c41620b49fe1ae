//! Accepted connections that stop speaking are closed. A connection must send its first bytes (the 24 bytes of the
//! HTTP/2 preface, or a TLS hello) within a deadline, and then never stay silent longer than [`IDLE`]: the server's
//! HTTP/2 keepalive pings (every 20 s) make every live client answer well within it. Without this, sockets opened
//! and left silent, or sent a byte and then left, piled up until the process ran out of file descriptors and no new
//! client could connect (about 1,010 did it; issue 13).

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};
use tonic::transport::server::Connected;

/// The HTTP/2 client preface's length: until that much has arrived, the first deadline holds.
const PREFACE: usize = 24;

/// The longest a connection may send nothing once it has begun: twice the keepalive ping interval plus its
/// timeout (`serve.rs`), so that an idle but live client, answering pings, never reaches it.
pub const IDLE: Duration = Duration::from_secs(80);

/// A connection whose reads fail with `TimedOut` when its deadline passes with nothing read: the first deadline
/// until the first [`PREFACE`] bytes are in, then [`IDLE`] after the last bytes read.
#[derive(Debug)]
pub struct FirstBytes<IO> {
    io: IO,
    received: usize,
    deadline: Pin<Box<Sleep>>,
}

impl<IO> FirstBytes<IO> {
    /// `io`, which must send its first bytes within `within`.
    pub fn new(io: IO, within: Duration) -> Self {
        Self { io, received: 0, deadline: Box::pin(tokio::time::sleep(within)) }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FirstBytes<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.received = this.received.saturating_add(read);
                if read > 0 && this.received >= PREFACE {
                    this.deadline.as_mut().reset(Instant::now() + IDLE);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the connection sent nothing before its deadline",
                    )));
                }
                Poll::Pending
            }
            failed => failed,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FirstBytes<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for FirstBytes<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
