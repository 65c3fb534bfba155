//! A client that half-closes its connection after a whole request (`shutdown(SHUT_WR)`: `nc -N`,
//! some proxies and scripted clients) is answered, and one that goes away is still let go at once.
//!
//! Both look the same when they happen: the end of the client's input (a FIN). hyper reads that
//! end during an exchange as the client leaving and drops the request, which cancelled the
//! upstream call of a client still waiting for its answer; hyper's `half_close` keeps the
//! exchange but stops reading, so a client that left was never noticed until its answer's bytes
//! were written, and a request held for a cooling account kept its upstream slot for hours.
//!
//! So the end of input met while a request waits for its answer is kept from hyper until the
//! answer is out, and whether the client is still there is asked the one way TCP can tell: a
//! client that closed its socket answers bytes sent to it with a reset, one that half-closed
//! takes them. The bytes are an interim `100 Continue` (which HTTP/1.1 clients take before any
//! answer, RFC 9110 15.2), then the answer's own. A reset seen is the read's error: hyper ends
//! the connection, and the request's upstream call is cancelled with it. An end met once the
//! answer is being written is the client leaving, as before (see `poll_read`).
//! A request body the client never finished is its end: `client_done` tells the body's reader.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The interim answer that asks whether a client whose input ended is still there.
const PROBE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How long after the probe the socket is checked for a reset at every turn of the connection's
/// task: a client that went away (the common case, an abort) answers within microseconds on one
/// machine and a request it left is cancelled before it goes further, as when an end of input
/// ended the exchange. Then the checks are a timer's, from `CHECK_FIRST` doubling up to
/// `CHECK_MAX` (across a network a reset takes a round trip).
const CHECK_AT_ONCE: Duration = Duration::from_micros(500);
const CHECK_FIRST: Duration = Duration::from_millis(1);
const CHECK_MAX: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Flags {
    /// A request was handed to the service and its answer is not all written yet.
    open: bool,
    /// The service gave its answer: hyper writes it from then on, and no probe may go between.
    answered: bool,
    /// The open request is HTTP/1.1 or later: it may get an interim answer.
    interim: bool,
    /// The client's input ended.
    ended: bool,
    /// hyper's read, waiting while the end is kept from it.
    reader: Option<Waker>,
}

/// What a connection's reader and the exchange on it share.
#[derive(Default)]
pub(super) struct Exchange {
    flags: Mutex<Flags>,
    ended: tokio::sync::Notify,
}

impl Exchange {
    fn flags(&self) -> std::sync::MutexGuard<'_, Flags> {
        self.flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request's head was read and goes to the service.
    pub(super) fn begin(&self, http11: bool) {
        let mut f = self.flags();
        f.open = true;
        f.answered = false;
        f.interim = http11;
    }

    /// The service answered; hyper writes the answer now.
    pub(super) fn answered(&self) {
        self.flags().answered = true;
    }

    /// The answer is written (hyper let go of its body): an end of input kept back is hyper's.
    pub(super) fn finish(&self) {
        let reader = {
            let mut f = self.flags();
            f.open = false;
            f.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Resolves once the client's input has ended (a body still being read will never finish).
    pub(super) async fn client_done(&self) {
        loop {
            let notified = self.ended.notified();
            if self.flags().ended {
                return;
            }
            notified.await;
        }
    }
}

/// The answer's body, which tells the exchange when hyper is done with it.
pub(super) struct Finished(pub(super) Arc<Exchange>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// A socket that can say whether the peer reset it.
pub(super) trait PeerReset {
    fn take_error(&self) -> io::Result<Option<io::Error>>;
}

impl PeerReset for tokio::net::TcpStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        tokio::net::TcpStream::take_error(self)
    }
}

impl<S: PeerReset> PeerReset for tokio_rustls::server::TlsStream<S> {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.get_ref().0.take_error()
    }
}

impl<L: PeerReset, R: PeerReset> PeerReset for tokio_util::either::Either<L, R> {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            tokio_util::either::Either::Left(s) => s.take_error(),
            tokio_util::either::Either::Right(s) => s.take_error(),
        }
    }
}

/// The connection as hyper reads and writes it (see the module's comment).
pub(super) struct HalfClose<S> {
    inner: S,
    exchange: Arc<Exchange>,
    /// The client's input ended.
    ended: bool,
    /// ... while its request waited for its answer: the end is kept from hyper until the answer
    /// is out, and whether the client is still there asked with a probe.
    kept: bool,
    /// Bytes of `PROBE` written; `None` until it is begun.
    probed: Option<usize>,
    /// hyper handed over bytes that are not flushed yet: a probe now would go between them.
    unflushed: bool,
    check: Option<Pin<Box<tokio::time::Sleep>>>,
    every: Duration,
    /// Until when the socket is checked at every turn (`CHECK_AT_ONCE` from the probe's end).
    at_once_until: Option<std::time::Instant>,
}

impl<S> HalfClose<S> {
    pub(super) fn new(inner: S, exchange: Arc<Exchange>) -> Self {
        HalfClose {
            inner,
            exchange,
            ended: false,
            kept: false,
            probed: None,
            unflushed: false,
            check: None,
            every: CHECK_FIRST,
            at_once_until: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> HalfClose<S> {
    /// Writes what is left of a probe begun, then flushes it.
    fn poll_probe(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(sent) = self.probed.filter(|&n| n < PROBE.len()) {
            match Pin::new(&mut self.inner).poll_write(cx, &PROBE[sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.probed = Some(sent + n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if self.probed == Some(PROBE.len()) {
                return Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + PeerReset + Unpin> AsyncRead for HalfClose<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.ended {
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                    this.ended = true;
                    let waiting = {
                        let mut f = this.exchange.flags();
                        f.ended = true;
                        f.open && !f.answered
                    };
                    this.exchange.ended.notify_waiters();
                    // Once the answer is being written the end is hyper's, the client gone, as
                    // before: a client half-closes as it finishes its request, long before its
                    // answer's head, and an answer whose upstream has gone silent has no byte
                    // to ask a client with.
                    if !waiting {
                        return Poll::Ready(Ok(()));
                    }
                    this.kept = true;
                }
                other => return other,
            }
        }
        if !this.kept {
            return Poll::Ready(Ok(()));
        }
        loop {
            let may_probe = {
                let mut f = this.exchange.flags();
                // Between exchanges (or once the answer is all out) the end is hyper's: it
                // closes the connection, as for any client done with it.
                if !f.open && !this.unflushed {
                    return Poll::Ready(Ok(()));
                }
                f.reader = Some(cx.waker().clone());
                f.open && !f.answered && f.interim
            };
            match this.inner.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Poll::Ready(Err(e)),
            }
            if this.probed.is_none() && may_probe && !this.unflushed {
                this.probed = Some(0);
            }
            if let Poll::Ready(Err(e)) = this.poll_probe(cx) {
                return Poll::Ready(Err(e));
            }
            // No probe sent (an HTTP/1.0 client, or one put off until hyper's bytes are out):
            // no reset can come to look for, and the waker left above is woken by the answer's
            // end or by the flush the probe waits for.
            if this.probed.is_none() {
                return Poll::Pending;
            }
            if this.probed == Some(PROBE.len()) {
                let until = *this
                    .at_once_until
                    .get_or_insert_with(|| std::time::Instant::now() + CHECK_AT_ONCE);
                if std::time::Instant::now() < until {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            let every = this.every;
            let check = this
                .check
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            match check.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.every = (every * 2).min(CHECK_MAX);
                    check
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.every);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HalfClose<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_probe(cx))?;
        this.unflushed = true;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_probe(cx))?;
        this.unflushed = true;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_probe(cx))?;
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = poll {
            let flushed = std::mem::replace(&mut this.unflushed, false);
            // An end of input kept back until the answer was out may be hyper's now, and a probe
            // put off may go. Only bytes just flushed change that: hyper flushes on every turn
            // of its loop, after its read, and a wake then would poll the connection again at
            // once, for as long as the request is held.
            if flushed && this.kept {
                if let Some(w) = this.exchange.flags().reader.take() {
                    w.wake();
                }
            }
        }
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_probe(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// A client that half-closed at once: every read is the end, every write taken whole.
    #[derive(Default)]
    struct HalfClosed {
        written: Vec<u8>,
    }

    impl AsyncRead for HalfClosed {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for HalfClosed {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl PeerReset for HalfClosed {
        fn take_error(&self) -> io::Result<Option<io::Error>> {
            Ok(None)
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One read as hyper makes it: what it filled, or pending.
    fn read(
        conn: &mut HalfClose<HalfClosed>,
        cx: &mut Context<'_>,
        space: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(space);
        Pin::new(conn)
            .poll_read(cx, &mut buf)
            .map_ok(|()| buf.filled().len())
    }

    #[tokio::test]
    async fn a_held_request_of_a_half_closed_client_is_not_polled_again_and_again() {
        let exchange = Arc::new(Exchange::default());
        let mut conn = HalfClose::new(HalfClosed::default(), exchange.clone());
        exchange.begin(true);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut space = [0u8; 64];
        // The probe, then a turn at once while a reset may come back within microseconds.
        assert!(read(&mut conn, &mut cx, &mut space).is_pending());
        assert!(wakes.0.load(Ordering::SeqCst) > 0, "looked again at once");
        std::thread::sleep(CHECK_AT_ONCE * 2);
        assert!(read(&mut conn, &mut cx, &mut space).is_pending());
        let at_once = wakes.0.load(Ordering::SeqCst);
        // hyper's loop, turn after turn while the answer is held: read, (nothing to write), flush.
        for _ in 0..3 {
            let mut buf = ReadBuf::new(&mut space);
            assert!(Pin::new(&mut conn)
                .poll_read(&mut cx, &mut buf)
                .is_pending());
            assert!(matches!(
                Pin::new(&mut conn).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        }
        assert_eq!(conn.inner.written, PROBE, "one probe, nothing else");
        // A flush with nothing written woke the connection at once: it spun while held.
        assert_eq!(wakes.0.load(Ordering::SeqCst), at_once);

        // The answer goes out; once it is flushed, the end kept back is hyper's.
        exchange.answered();
        assert!(matches!(
            Pin::new(&mut conn).poll_write(&mut cx, b"HTTP/1.1 200 OK\r\n\r\n"),
            Poll::Ready(Ok(_))
        ));
        exchange.finish();
        let woken = wakes.0.load(Ordering::SeqCst);
        assert!(read(&mut conn, &mut cx, &mut space).is_pending());
        assert!(matches!(
            Pin::new(&mut conn).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            woken + 1,
            "the flush wakes the read"
        );
        assert!(matches!(
            read(&mut conn, &mut cx, &mut space),
            Poll::Ready(Ok(0))
        ));
    }
}
