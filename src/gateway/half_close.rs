//! A client that half-closes its connection after a whole request (`shutdown(SHUT_WR)`: `nc -N`,
//! socat, some proxies and scripted clients) is answered, and one that goes away is still let go.
//!
//! Both look the same when they happen: the end of the client's input (a FIN). hyper reads that
//! end during an exchange as the client leaving and drops the request, which cancelled the
//! upstream call of a client still waiting for its answer; hyper's `half_close` keeps the
//! exchange but stops reading, so a client that left was never noticed until its answer's bytes
//! were written, and a request held for a cooling account kept its upstream slot for hours.
//!
//! So the end of input met while a request waits for its answer is kept from hyper until the
//! answer is out, and whether the client is still there is asked the one way TCP can tell: a
//! socket its client closed answers bytes sent to it with a reset, one that is only half-closed
//! takes them. The question is asked again while the answer is held, because a client that
//! half-closed may close later (socat does half a second after its input ends, a relay when its
//! own client goes), and nothing comes from a closed socket unless something is sent to it.
//! The bytes: to an HTTP/1.1 client an interim `100 Continue`, which it takes before any answer,
//! as many as come (RFC 9110 15.2). An HTTP/1.0 client may be sent no interim answer; on this
//! machine it is sent one byte of TCP urgent data, which its system keeps out of what the client
//! reads and a closed socket answers with a reset like any byte (from another machine it gets
//! nothing: a middlebox may clear the urgent flag, RFC 6093 5, and the byte would land in the
//! answer). A reset seen is the read's error: hyper ends the connection, and the request's
//! upstream call is cancelled with it. An end met once the answer is being written is the client
//! leaving, as before (see `poll_read`).
//! A request body the client never finished is its end: `client_done` tells the body's reader.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The interim answer that asks whether a client whose input ended is still there.
const PROBE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How long after a probe the socket is checked for a reset at every turn of the connection's
/// task: a client that went away (the common case, an abort) answers within microseconds on one
/// machine and a request it left is cancelled before it goes further, as when an end of input
/// ended the exchange. Then the checks are a timer's, from `CHECK_FIRST` doubling up to
/// `CHECK_MAX` (across a network a reset takes a round trip).
const CHECK_AT_ONCE: Duration = Duration::from_micros(500);
const CHECK_FIRST: Duration = Duration::from_millis(1);
const CHECK_MAX: Duration = Duration::from_secs(1);
/// The probe is sent again `PROBE_AGAIN` after the first, then at doubling intervals up to
/// `PROBE_MAX`: a client that closes while its answer is held is let go within that, and one
/// that waits an hour for its answer reads about 240 interim answers (a timer's wake every
/// 15 s, nothing in between).
const PROBE_AGAIN: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(15);

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
    /// The answer's body failed after its head went out (the upstream broke off).
    broken: bool,
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

    /// The gateway stops with this exchange's answer not all written (the drain time is over):
    /// the connection is to end as a broken answer's does, with a reset.
    pub(super) fn cut_if_open(&self) {
        let mut f = self.flags();
        if f.open {
            f.broken = true;
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

/// The answer's body, which tells the exchange when hyper is done with it (lets go of it). Its
/// length passes through: a wrapper that hid it (`map_frame`) made every answer chunked, and to
/// an HTTP/1.0 client ended by the close, which a client that asked for keep-alive was still
/// told it had (its next request on the connection went unanswered).
pub(super) struct Finishing<B> {
    body: B,
    exchange: Arc<Exchange>,
}

impl<B> Finishing<B> {
    pub(super) fn new(body: B, exchange: Arc<Exchange>) -> Self {
        Finishing { body, exchange }
    }
}

impl<B> Drop for Finishing<B> {
    fn drop(&mut self) {
        self.exchange.finish();
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Finishing<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &frame {
            self.exchange.flags().broken = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket that can say whether the peer reset it, and send it a byte it will not read.
pub(super) trait PeerReset {
    fn take_error(&self) -> io::Result<Option<io::Error>>;

    /// Sends the peer one byte of TCP urgent data if it is on this machine; `Ok(false)` when
    /// nothing was sent (another machine, or a system without it here).
    fn send_urgent(&self) -> io::Result<bool>;

    /// Makes the socket's close a reset (`SO_LINGER` 0) instead of an orderly end.
    fn reset_on_close(&self) -> io::Result<()>;
}

impl PeerReset for tokio::net::TcpStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        tokio::net::TcpStream::take_error(self)
    }

    #[cfg(unix)]
    fn send_urgent(&self) -> io::Result<bool> {
        if !self.peer_addr()?.ip().to_canonical().is_loopback() {
            return Ok(false);
        }
        // A reset peer is an error here, not a SIGPIPE for the process that hosts the addon
        // (elsewhere, as for every write on a socket, the host's ignored SIGPIPE is relied on).
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let flags = libc::MSG_OOB | libc::MSG_NOSIGNAL;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let flags = libc::MSG_OOB;
        socket2::SockRef::from(self)
            .send_with_flags(&[0], flags)
            .map(|n| n > 0)
    }

    #[cfg(not(unix))]
    fn send_urgent(&self) -> io::Result<bool> {
        Ok(false)
    }

    #[cfg(unix)]
    fn reset_on_close(&self) -> io::Result<()> {
        socket2::SockRef::from(self).set_linger(Some(Duration::ZERO))
    }

    #[cfg(not(unix))]
    fn reset_on_close(&self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: PeerReset> PeerReset for tokio_rustls::server::TlsStream<S> {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.get_ref().0.take_error()
    }

    /// Beside the TLS stream: the client's system keeps the byte out of what TLS reads.
    fn send_urgent(&self) -> io::Result<bool> {
        self.get_ref().0.send_urgent()
    }

    /// No `close_notify` goes out either: a TLS client sees the answer cut, not finished.
    fn reset_on_close(&self) -> io::Result<()> {
        self.get_ref().0.reset_on_close()
    }
}

impl<L: PeerReset, R: PeerReset> PeerReset for tokio_util::either::Either<L, R> {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            tokio_util::either::Either::Left(s) => s.take_error(),
            tokio_util::either::Either::Right(s) => s.take_error(),
        }
    }

    fn send_urgent(&self) -> io::Result<bool> {
        match self {
            tokio_util::either::Either::Left(s) => s.send_urgent(),
            tokio_util::either::Either::Right(s) => s.send_urgent(),
        }
    }

    fn reset_on_close(&self) -> io::Result<()> {
        match self {
            tokio_util::either::Either::Left(s) => s.reset_on_close(),
            tokio_util::either::Either::Right(s) => s.reset_on_close(),
        }
    }
}

/// The connection as hyper reads and writes it (see the module's comment).
pub(super) struct HalfClose<S: PeerReset> {
    inner: S,
    exchange: Arc<Exchange>,
    /// The client's input ended.
    ended: bool,
    /// ... while its request waited for its answer: the end is kept from hyper until the answer
    /// is out, and whether the client is still there asked with probes.
    kept: bool,
    /// Bytes of `PROBE` written of the one under way.
    probe: Option<usize>,
    /// When the next probe is due; `None` until the first is sent (it goes at once).
    probe_at: Option<Instant>,
    /// The wait after the next probe.
    probe_every: Duration,
    /// Urgent data cannot be sent to this client (see `PeerReset::send_urgent`).
    no_urgent: bool,
    /// hyper wrote bytes of an answer on this connection, which the client may not have read.
    wrote: bool,
    /// An urgent byte went out behind such bytes: the kernel keeps only the newest urgent byte
    /// out of band, and one sent after it turned it into a NUL in the data the client reads
    /// (an HTTP/1.0 client that pipelined, half-closed and read nothing yet got
    /// `\0\0\0HTTP/1.0 200 OK`). No other is sent on this connection.
    urgent_behind_answer: bool,
    /// hyper handed over bytes that are not flushed yet: a probe now would go between them.
    unflushed: bool,
    /// Until when the socket is checked at every turn (`CHECK_AT_ONCE` from a probe's end).
    at_once_until: Option<Instant>,
    /// When the socket is checked next (`None` before any probe), and the wait after that.
    check_at: Option<Instant>,
    check_every: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read ahead of hyper while a request waits for its answer (see `poll_ahead`), given
    /// to hyper before anything else.
    ahead: Vec<u8>,
    /// hyper's last read waits on the socket: it sees the end itself, nothing is read ahead.
    parked: bool,
    /// The end of input was found reading ahead and hyper has not come to it yet: it is kept
    /// from hyper (and from the body's reader: hyper may hold bytes of the body before it), and
    /// hyper may not read, so the probes are driven from its flushes.
    ended_ahead: bool,
}

impl<S: PeerReset> HalfClose<S> {
    pub(super) fn new(inner: S, exchange: Arc<Exchange>) -> Self {
        HalfClose {
            inner,
            exchange,
            ended: false,
            kept: false,
            probe: None,
            probe_at: None,
            probe_every: PROBE_AGAIN,
            no_urgent: false,
            wrote: false,
            urgent_behind_answer: false,
            unflushed: false,
            at_once_until: None,
            check_at: None,
            check_every: CHECK_FIRST,
            timer: None,
            ahead: Vec::new(),
            parked: false,
            ended_ahead: false,
        }
    }

    /// A probe went out: the socket is looked at closely for a while, the next probe planned.
    fn probed(&mut self) {
        let now = Instant::now();
        self.probe = None;
        self.at_once_until = Some(now + CHECK_AT_ONCE);
        self.check_every = CHECK_FIRST;
        self.check_at = Some(now + CHECK_AT_ONCE + CHECK_FIRST);
        self.probe_at = Some(now + self.probe_every);
        self.probe_every = (self.probe_every * 2).min(PROBE_MAX);
    }

    /// Whether a probe may begin now if one is due: the answer is held, none of hyper's bytes
    /// wait for a flush, no probe is under way, and this client can be asked.
    fn may_probe(&self, held: bool, interim: bool) -> bool {
        held && !self.unflushed
            && self.probe.is_none()
            && (interim || !(self.no_urgent || self.urgent_behind_answer))
    }
}

impl<S: AsyncWrite + PeerReset + Unpin> HalfClose<S> {
    /// Writes what is left of a probe begun, then flushes it.
    fn poll_probe(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(sent) = self.probe {
            if sent < PROBE.len() {
                match std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &PROBE[sent..])) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => self.probe = Some(sent + n),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            } else {
                std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                self.probed();
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// An answer whose body failed is cut with a reset: ended in order, an answer read to the close
/// (HTTP/1.0, and so nginx's default upstream) would look whole to its client.
impl<S: PeerReset> Drop for HalfClose<S> {
    fn drop(&mut self) {
        if self.exchange.flags().broken {
            let _ = self.inner.reset_on_close();
        }
    }
}

/// The most read ahead of hyper (`poll_ahead`): a client that pipelined more than that behind a
/// held request is seen gone only when its answer is written, as before.
const AHEAD_MAX: usize = 64 * 1024;

impl<S: AsyncRead + AsyncWrite + PeerReset + Unpin> HalfClose<S> {
    /// The client's input ended: whether the end is kept from hyper (a request waits for its
    /// answer) or is hyper's now.
    fn input_ended(&mut self) -> bool {
        self.ended = true;
        let waiting = {
            let mut f = self.exchange.flags();
            f.ended = true;
            f.open && !f.answered
        };
        self.exchange.ended.notify_waiters();
        // Once the answer is being written the end is hyper's, the client gone, as before: a
        // client half-closes as it finishes its request, long before its answer's head, and an
        // answer whose upstream has gone silent has no byte to ask a client with.
        self.kept = waiting;
        waiting
    }

    /// While a request waits for its answer, reads what the client sends on, for hyper to take
    /// later: hyper reads no further while a pipelined request's bytes wait in its buffer, so
    /// the end of a client that pipelined and went away was never read, and a request held for
    /// a cooling account kept its upstream slot until the hold ended (nothing is written to it
    /// to fail meanwhile). hyper flushes on every turn of its loop, which is when this is done;
    /// the read's waker is the connection's. A reset is the client gone; an end is kept as any.
    fn poll_ahead(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let waiting = {
            let f = self.exchange.flags();
            f.open && !f.answered
        };
        while waiting && !self.parked && !self.ended && self.ahead.len() < AHEAD_MAX {
            let mut chunk = [0u8; 4096];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    self.ended = true;
                    self.ended_ahead = true;
                    self.kept = true;
                }
                Poll::Ready(Ok(())) => self.ahead.extend_from_slice(buf.filled()),
            }
        }
        Ok(())
    }

    /// An end of input kept from hyper while a request waits: the probes, and the checks for a
    /// reset. Ready with `Ok` once the end is hyper's, with the reset's error once the client is
    /// seen gone.
    fn poll_kept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self;
        loop {
            let (held, interim) = {
                let mut f = this.exchange.flags();
                // Between exchanges (or once the answer is all out) the end is hyper's: it
                // closes the connection, as for any client done with it.
                if !f.open && !this.unflushed {
                    return Poll::Ready(Ok(()));
                }
                f.reader = Some(cx.waker().clone());
                (f.open && !f.answered, f.interim)
            };
            match this.inner.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Poll::Ready(Err(e)),
            }
            let now = Instant::now();
            if this.may_probe(held, interim) && this.probe_at.is_none_or(|at| now >= at) {
                if interim {
                    this.probe = Some(0);
                } else {
                    match this.inner.send_urgent() {
                        Ok(true) => {
                            this.urgent_behind_answer = this.wrote;
                            this.probed();
                        }
                        Ok(false) => this.no_urgent = true,
                        // The client's buffer is full of bytes it has not read: asked later.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            this.probe_at = Some(now + CHECK_MAX);
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            // A probe that cannot be written now wakes the connection when it can.
            std::task::ready!(this.poll_probe(cx))?;
            // No probe sent (an HTTP/1.0 client on another machine, or one put off until
            // hyper's bytes are out): no reset can come to look for, and the waker left above
            // is woken by the answer's end or by the flush the probe waits for.
            let Some(mut check_at) = this.check_at else {
                return Poll::Pending;
            };
            if let Some(until) = this.at_once_until {
                if now < until {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                this.at_once_until = None;
            }
            // The socket was just checked: the next check is planned from here.
            if check_at <= now {
                this.check_every = (this.check_every * 2).min(CHECK_MAX);
                check_at = now + this.check_every;
                this.check_at = Some(check_at);
            }
            let mut wake_at = check_at;
            if this.may_probe(held, interim) {
                if let Some(at) = this.probe_at {
                    wake_at = wake_at.min(at);
                }
            }
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake_at)));
            if timer.deadline() != wake_at {
                timer.as_mut().reset(wake_at);
            }
            match timer.as_mut().poll(cx) {
                // A timer that has fired is made anew: polled again, it would be ready again.
                Poll::Ready(()) => this.timer = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + PeerReset + Unpin> AsyncRead for HalfClose<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if this.ended_ahead {
            // hyper comes to the end read ahead: from here it is as if hyper had read it.
            this.ended_ahead = false;
            if !this.input_ended() {
                return Poll::Ready(Ok(()));
            }
        } else if !this.ended {
            let before = buf.filled().len();
            let read = Pin::new(&mut this.inner).poll_read(cx, buf);
            this.parked = read.is_pending();
            match read {
                Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                    if !this.input_ended() {
                        return Poll::Ready(Ok(()));
                    }
                }
                other => return other,
            }
        }
        if !this.kept {
            return Poll::Ready(Ok(()));
        }
        this.poll_kept(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + PeerReset + Unpin> AsyncWrite for HalfClose<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_probe(cx))?;
        this.unflushed = true;
        this.wrote = true;
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
        this.wrote = true;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // hyper may not read while a request waits (a pipelined one in its buffer): the end of
        // the client's input is looked for here, and a kept one asked about.
        this.poll_ahead(cx)?;
        if this.ended_ahead && this.kept {
            if let Poll::Ready(Err(e)) = this.poll_kept(cx) {
                return Poll::Ready(Err(e));
            }
        }
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

    /// A client that half-closed at once: every read is the end (after `unread`, what it sent
    /// before), every write taken whole.
    #[derive(Default)]
    struct HalfClosed {
        unread: Vec<u8>,
        written: Vec<u8>,
        /// Bytes of urgent data sent to it.
        urgent: AtomicUsize,
        /// It closes its socket once it has been sent this many probes: from then on, as a
        /// closed socket does, it answers with a reset.
        closes_after: Option<usize>,
    }

    impl HalfClosed {
        fn probes(&self) -> usize {
            self.written.len() / PROBE.len() + self.urgent.load(Ordering::SeqCst)
        }
    }

    impl AsyncRead for HalfClosed {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.drain(..n);
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
            Ok(self
                .closes_after
                .is_some_and(|n| self.probes() >= n)
                .then(|| io::ErrorKind::ConnectionReset.into()))
        }

        fn send_urgent(&self) -> io::Result<bool> {
            self.urgent.fetch_add(1, Ordering::SeqCst);
            Ok(true)
        }

        fn reset_on_close(&self) -> io::Result<()> {
            Ok(())
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

    /// hyper reads no further while a pipelined request waits in its buffer: only its flushes
    /// come. What the client sent on is read ahead for hyper, and the end behind it is asked
    /// about from the flushes, but kept from the body's reader until hyper comes to it (hyper may
    /// hold bytes of the open request's body before it).
    #[tokio::test]
    async fn the_end_behind_a_pipelined_request_is_read_ahead_and_asked_about() {
        let next = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        for closes in [true, false] {
            let exchange = Arc::new(Exchange::default());
            let client = HalfClosed {
                unread: next.clone(),
                closes_after: closes.then_some(1),
                ..HalfClosed::default()
            };
            let mut conn = HalfClose::new(client, exchange.clone());
            exchange.begin(true);
            let flushed = Pin::new(&mut conn).poll_flush(&mut cx);
            assert!(matches!(flushed, Poll::Ready(Ok(()))), "{flushed:?}");
            assert_eq!(conn.ahead, next, "read ahead for hyper");
            assert_eq!(conn.inner.written, PROBE, "the end asked about");
            assert!(!exchange.flags().ended, "the body's reader is not told yet");
            if closes {
                // The client closed: the probe met a reset, which the next flush sees.
                let gone = Pin::new(&mut conn).poll_flush(&mut cx);
                assert!(matches!(gone, Poll::Ready(Err(_))), "{gone:?}");
                continue;
            }
            // hyper reads the pipelined request, then comes to the end: held, it is kept.
            let mut space = [0u8; 64];
            assert!(
                matches!(read(&mut conn, &mut cx, &mut space), Poll::Ready(Ok(n)) if n == next.len())
            );
            assert_eq!(&space[..next.len()], &next[..]);
            assert!(read(&mut conn, &mut cx, &mut space).is_pending());
            assert!(exchange.flags().ended, "told once hyper came to it");
        }
    }

    /// hyper's turns on a connection whose answer is held, `elapsed` of paused time apart: each
    /// a read (pending while held) and a flush.
    async fn held_for(conn: &mut HalfClose<HalfClosed>, elapsed: Duration) -> io::Result<()> {
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut space = [0u8; 64];
        let step = Duration::from_millis(1);
        let mut passed = Duration::ZERO;
        while passed < elapsed {
            match read(conn, &mut cx, &mut space) {
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(n)) => panic!("the end reached hyper while held ({n} bytes)"),
                Poll::Pending => {}
            }
            assert!(matches!(
                Pin::new(&mut *conn).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
            tokio::time::advance(step).await;
            passed += step;
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_closed_client_is_asked_again_while_held_and_let_go_once_it_closed() {
        // It half-closed, took the first probe, and closed its socket later: without a second
        // probe nothing ever came back from it, and the held request went on upstream.
        let exchange = Arc::new(Exchange::default());
        let client = HalfClosed {
            closes_after: Some(2),
            ..HalfClosed::default()
        };
        let mut conn = HalfClose::new(client, exchange.clone());
        exchange.begin(true);
        held_for(&mut conn, Duration::from_millis(900))
            .await
            .expect("still there after one probe");
        assert_eq!(conn.inner.written, PROBE, "one probe at once");
        let err = held_for(&mut conn, Duration::from_secs(1))
            .await
            .expect_err("the reset that answered the second probe");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(conn.inner.written, [PROBE, PROBE].concat());
    }

    #[tokio::test(start_paused = true)]
    async fn behind_an_answer_already_written_one_urgent_byte_goes_out_not_one_per_probe() {
        use tokio::io::AsyncWriteExt;
        let exchange = Arc::new(Exchange::default());
        let mut conn = HalfClose::new(HalfClosed::default(), exchange.clone());
        conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await.unwrap();
        conn.flush().await.unwrap();
        exchange.begin(false);
        held_for(&mut conn, Duration::from_millis(60_500))
            .await
            .unwrap();
        assert_eq!(conn.inner.probes(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_come_at_doubling_intervals_and_an_http_1_0_client_gets_urgent_bytes_only() {
        for http11 in [true, false] {
            let exchange = Arc::new(Exchange::default());
            let mut conn = HalfClose::new(HalfClosed::default(), exchange.clone());
            exchange.begin(http11);
            // At 0 s, then 1, 3, 7, 15, 30, 45 and 60 s.
            held_for(&mut conn, Duration::from_millis(60_500))
                .await
                .unwrap();
            assert_eq!(conn.inner.probes(), 8, "HTTP/1.1: {http11}");
            let interim = conn.inner.written.len() / PROBE.len();
            assert_eq!(interim, if http11 { 8 } else { 0 }, "HTTP/1.1: {http11}");
            // Once the answer is being written, nothing goes between its bytes.
            exchange.answered();
            held_for(&mut conn, Duration::from_secs(30)).await.unwrap();
            assert_eq!(conn.inner.probes(), 8);
        }
    }
}
