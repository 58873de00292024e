//! A TCP stream whose writes are combined: what a connection writes during
//! one turn of the event loop reaches the socket in one system call.
//!
//! h2 flushes its frame buffer each time it has queued a DATA frame of 256
//! bytes or more (it sends such payloads without copying, one at a time),
//! so a connection carrying many streams of 1 KiB messages makes a
//! `writev` per message. Here writes are copied into a buffer that a
//! writer task of the connection's own empties: it runs after the tasks
//! already woken, so everything they wrote goes out together (Envoy and
//! nginx do the same at the end of each event-loop iteration). Reads go
//! straight to the socket.
//!
//! Flushing means "handed to the writer"; shutting down waits until the
//! writer has written everything and shut the socket's write side. A write
//! error is reported by the next write, flush or shutdown. The buffer is
//! bounded: past [`MAX_BUFFERED`] a write waits for the writer.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Most bytes waiting for the writer before writes wait (h2's own frame
/// buffer is 16 KiB; its flow-control windows bound the rest).
pub const MAX_BUFFERED: usize = 256 * 1024;

/// How long a closing connection's last bytes may take to leave.
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// One side of a TCP connection with combined writes.
#[derive(Debug)]
pub struct CoalescedIo {
    read: OwnedReadHalf,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes written and not yet handed to the socket.
    pending: BytesMut,
    /// The writer, waiting for bytes.
    writer: Option<Waker>,
    /// The connection, waiting for room (or for the shutdown to finish).
    waiting: Option<Waker>,
    /// The first write error; the writer has stopped.
    error: Option<(io::ErrorKind, String)>,
    /// Shutdown asked: the writer writes what is left, then shuts down.
    closing: bool,
    /// The writer has finished (after a shutdown or an error).
    closed: bool,
}

impl CoalescedIo {
    /// Wraps `stream`, spawning its writer on the current runtime.
    pub fn new(stream: TcpStream) -> Self {
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared::default());
        tokio::spawn(write_loop(write, shared.clone()));
        Self { read, shared }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Asks the writer to write what is left and shut the socket down.
    fn close(&mut self) {
        self.closing = true;
        self.wake_writer();
    }

    fn wake_writer(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.wake();
        }
    }

    fn failed(&self) -> Option<io::Error> {
        self.error
            .as_ref()
            .map(|(kind, message)| io::Error::new(*kind, message.clone()))
    }
}

/// The writer: takes everything pending at once and writes it. Once the
/// connection is shutting down (or gone), a peer that stops reading gets
/// [`LINGER`] to take the rest.
async fn write_loop(mut socket: OwnedWriteHalf, shared: Arc<Shared>) {
    let mut batch = BytesMut::new();
    loop {
        let (has_batch, closing) = std::future::poll_fn(|cx| {
            let mut state = shared.lock();
            if !state.pending.is_empty() {
                std::mem::swap(&mut batch, &mut state.pending);
                // Room again for a connection that waited for it.
                if let Some(waker) = state.waiting.take() {
                    waker.wake();
                }
                return Poll::Ready((true, state.closing));
            }
            if state.closing {
                return Poll::Ready((false, true));
            }
            state.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let io = async {
            if has_batch {
                let written = socket.write_all(&batch).await;
                batch.clear();
                written
            } else {
                socket.shutdown().await
            }
        };
        let result = if closing {
            tokio::time::timeout(LINGER, io).await.unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stopped reading",
                ))
            })
        } else {
            io.await
        };
        let finished = !has_batch;
        let mut state = shared.lock();
        if let Err(error) = &result {
            state.error = Some((error.kind(), error.to_string()));
        }
        if finished || result.is_err() {
            state.closed = true;
            state.pending = BytesMut::new();
            if let Some(waker) = state.waiting.take() {
                waker.wake();
            }
            return;
        }
    }
}

impl AsyncRead for CoalescedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl CoalescedIo {
    /// Copies `bufs` into the pending bytes, waking the writer.
    fn poll_buffer(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.lock();
        if let Some(error) = state.failed() {
            return Poll::Ready(Err(error));
        }
        if state.closing || state.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        let room = MAX_BUFFERED.saturating_sub(state.pending.len());
        if room == 0 {
            state.waiting = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut taken = 0;
        for buf in bufs {
            let part = &buf[..buf.len().min(room - taken)];
            state.pending.extend_from_slice(part);
            taken += part.len();
            if taken == room {
                break;
            }
        }
        if taken > 0 {
            state.wake_writer();
        }
        Poll::Ready(Ok(taken))
    }
}

impl AsyncWrite for CoalescedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_buffer(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_buffer(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer has the bytes and runs next: that is the flush.
        match self.shared.lock().failed() {
            Some(error) => Poll::Ready(Err(error)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        if state.closed {
            return Poll::Ready(state.failed().map_or(Ok(()), Err));
        }
        if !state.closing {
            state.close();
        }
        state.waiting = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for CoalescedIo {
    fn drop(&mut self) {
        // The writer still sends what was written, then closes its half.
        self.shared.lock().close();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (CoalescedIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            CoalescedIo::new(client.expect("connect")),
            accepted.expect("accept").0,
        )
    }

    #[tokio::test]
    async fn writes_arrive_in_order_and_shutdown_ends_the_stream() {
        let (mut io, mut peer) = pair().await;
        let mut sent = Vec::new();
        for i in 0..200u32 {
            let chunk = vec![(i % 251) as u8; 1 + (i as usize * 37) % 3000];
            io.write_all(&chunk).await.expect("write");
            io.flush().await.expect("flush");
            sent.extend_from_slice(&chunk);
        }
        io.shutdown().await.expect("shutdown");
        let mut received = Vec::new();
        peer.read_to_end(&mut received)
            .await
            .expect("read to the end");
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "bytes differ");
    }

    #[tokio::test]
    async fn a_full_buffer_waits_for_the_writer_and_nothing_is_lost() {
        let (mut io, mut peer) = pair().await;
        // Four times the bound, while the peer reads slowly at first.
        let total = 4 * MAX_BUFFERED;
        let writer = tokio::spawn(async move {
            let block = vec![7u8; 64 * 1024];
            let mut written = 0;
            while written < total {
                io.write_all(&block).await.expect("write");
                written += block.len();
            }
            io.shutdown().await.expect("shutdown");
        });
        let mut received = Vec::new();
        peer.read_to_end(&mut received).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(received.len(), total);
        assert!(received.iter().all(|b| *b == 7));
    }

    #[tokio::test]
    async fn dropping_it_still_sends_what_was_written() {
        let (mut io, mut peer) = pair().await;
        io.write_all(b"last words").await.expect("write");
        drop(io);
        let mut received = Vec::new();
        peer.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, b"last words");
    }

    #[tokio::test]
    async fn reads_come_from_the_socket() {
        let (mut io, mut peer) = pair().await;
        peer.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn a_write_after_the_peer_is_gone_fails() {
        let (mut io, peer) = pair().await;
        drop(peer);
        // The first writes may still be accepted by the kernel; the error
        // shows within a bounded number of writes once the reset arrives.
        let mut failed = false;
        for _ in 0..1000 {
            if io.write_all(&[0u8; 1024]).await.is_err() || io.flush().await.is_err() {
                failed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(failed, "writes to a closed peer never failed");
    }
}
