//! The body of an answer on its way to JavaScript, in batches. Event streams are read when
//! JavaScript asks (one hop from the socket: latency); bulk bodies are read ahead by a task
//! while JavaScript consumes earlier chunks (throughput), bounded so a slow reader slows the
//! socket; small bodies of known size are read whole before the answer crosses (one crossing).

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::usage::UsageTap;
use crate::engine::UsageSink;
use crate::error::{Error, Result};
use crate::fetch;
use crate::http;

/// An answer's body on its way to JavaScript, with the usage tap watching the bytes go by.
/// The tap reports when the body ends, or when it is dropped (an aborted or abandoned stream
/// counts what it reported until then).
pub struct AnswerBody {
    state: ResponseBody,
    tap: Option<(UsageTap, UsageSink)>,
    /// The credential the request presented, taken back out of the body as it passes (a server
    /// echoing the request: a wrong API URL, a debugging proxy). The answer's text reaches
    /// OpenCode's screen, its session files and shared sessions.
    redactor: Option<crate::echo::Redactor>,
}

impl AnswerBody {
    pub async fn new(
        body: fetch::Body,
        event_stream: bool,
        sink: Option<UsageSink>,
        presented: Vec<crate::secret::Secret>,
        cancel: &CancellationToken,
    ) -> Result<AnswerBody> {
        let tap = sink
            .filter(|s| s.wanted(event_stream))
            .map(|s| (UsageTap::new(event_stream), s));
        let state = ResponseBody::new(body, cancel).await?;
        let redactor = (!presented.is_empty()).then(|| match state {
            ResponseBody::Bulk(_) => crate::echo::Redactor::bulk(presented),
            _ => crate::echo::Redactor::new(presented),
        });
        Ok(AnswerBody {
            state,
            tap,
            redactor,
        })
    }

    pub fn done() -> AnswerBody {
        AnswerBody {
            state: ResponseBody::Done,
            tap: None,
            redactor: None,
        }
    }

    fn watch(&mut self, bytes: &[u8]) {
        if let Some((tap, _)) = &mut self.tap {
            tap.observe(bytes);
        }
    }

    fn report(&mut self) {
        if let Some((mut tap, sink)) = self.tap.take() {
            sink.record(&mut tap);
        }
    }

    pub fn take_full(&mut self) -> Option<Bytes> {
        let full = self.state.take_full()?;
        self.watch(&full);
        self.report();
        Some(match self.redactor.take() {
            Some(mut r) => match (r.pass(full), r.finish()) {
                (start, rest) if rest.is_empty() => start,
                (start, rest) => [start, rest].concat().into(),
            },
            None => full,
        })
    }

    pub async fn next_batch(&mut self, cancel: &CancellationToken) -> Result<Option<Vec<Bytes>>> {
        loop {
            let batch = self.state.next_batch(cancel).await;
            match &batch {
                Ok(Some(parts)) => {
                    for part in parts {
                        self.watch(part);
                    }
                }
                _ => self.report(),
            }
            let Some(redactor) = self.redactor.as_mut() else {
                return batch;
            };
            match batch {
                Ok(Some(parts)) => {
                    let parts: Vec<Bytes> = parts
                        .into_iter()
                        .map(|p| redactor.pass(p))
                        .filter(|p| !p.is_empty())
                        .collect();
                    // All of it held (the start of a credential): read on.
                    if !parts.is_empty() {
                        return Ok(Some(parts));
                    }
                }
                // The end: what was held as a credential's start, which never finished, goes
                // out last. A failure drops it with the rest of the stream.
                Ok(None) => {
                    let rest = redactor.finish();
                    return Ok((!rest.is_empty()).then(|| vec![rest]));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops reading (the caller cancelled): what was seen counts.
    pub fn close(&mut self) {
        self.state = ResponseBody::Done;
        self.report();
    }
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        self.report();
    }
}

/// Most bytes handed over per batch. Chunks already here are batched (fewer crossings), but a
/// batch never waits to be filled (SSE latency). A batch is copied once, straight into the
/// JavaScript Buffer; so copied, 1 MB batches cut the CPU of a bulk stream by about a third
/// against 256 KB (24-30 ms against 34-39 per 64 MB), and 2 MB with twice the read-ahead bought
/// nothing more (bench/, issue 17).
const MAX_BATCH: usize = 1024 * 1024;
/// Chunks read ahead of the reader (hyper chunks are at most tens of KB).
const READ_AHEAD_CHUNKS: usize = 8;
/// Bodies of a known size up to this are read whole before the answer is handed over.
pub(crate) const SMALL_BODY: u64 = 64 * 1024;
/// The most of a small body sent compressed (`coding::coded_length`) read before the answer is
/// handed over: its decoded size is unknown until it is read (a thousandfold at most), and one
/// larger goes on as a stream.
pub(crate) const SMALL_DECODED: usize = 1024 * 1024;

/// How much of the body to read before the answer is handed over, for a small one (of a known
/// size, or sent compressed in a small size): one more byte than it can be, to read its end.
pub(crate) fn small_read(r: &reqwest::Response) -> Option<usize> {
    let small = |n: &u64| *n <= SMALL_BODY;
    match r.content_length().filter(small) {
        Some(n) => usize::try_from(n).ok().map(|n| n + 1),
        None => crate::coding::coded_length(r)
            .filter(small)
            .map(|_| SMALL_DECODED + 1),
    }
}

pub enum ResponseBody {
    OnDemand(Box<reqwest::Response>),
    /// A bulk body nobody has asked for yet: its read-ahead starts with the first read. Started
    /// at once, an answer the caller dropped unread kept the read-ahead's chunks (about 1 MB of
    /// a 1 MB body) in memory the JavaScript collector does not see, until a collection that
    /// nothing prompted (1.6 GB of RSS after 10,000 such answers).
    Bulk(Box<reqwest::Response>),
    ReadAhead(mpsc::Receiver<Result<Bytes, String>>),
    Full(Bytes),
    /// Bytes read already (the start of a 400), then the rest of the body.
    Prefixed(Bytes, Box<ResponseBody>),
    /// The stream broke after the bytes already delivered; the next read reports it.
    Failed(String),
    Done,
}

pub fn is_event_stream(r: &reqwest::Response) -> bool {
    r.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

fn mid_stream(detail: String) -> Error {
    Error::Network {
        what: "the API (mid-stream)",
        detail,
        never_connected: false,
    }
}

impl ResponseBody {
    pub async fn new(body: fetch::Body, cancel: &CancellationToken) -> Result<ResponseBody> {
        Ok(match body {
            fetch::Body::Stream(r) if r.content_length().is_some_and(|n| n <= SMALL_BODY) => {
                ResponseBody::Full(read_small(r, cancel).await?)
            }
            // Sent compressed in a small size: read as far as a small body may decode to, so
            // that one cut fails the request as a plain one does, not its read once handed over.
            fetch::Body::Stream(mut r) if small_read(&r).is_some() => {
                let (start, whole) = fetch::peek(&mut r, SMALL_DECODED + 1, cancel).await?;
                let rest = match is_event_stream(&r) {
                    _ if whole && start.is_empty() => return Ok(ResponseBody::Done),
                    _ if whole => return Ok(ResponseBody::Full(start)),
                    true => ResponseBody::OnDemand(Box::new(r)),
                    false => ResponseBody::Bulk(Box::new(r)),
                };
                ResponseBody::Prefixed(start, Box::new(rest))
            }
            fetch::Body::Stream(r) if is_event_stream(&r) => ResponseBody::OnDemand(Box::new(r)),
            fetch::Body::Stream(r) => ResponseBody::Bulk(Box::new(r)),
            fetch::Body::Peeked(start, r) => {
                ResponseBody::Prefixed(start, Box::new(ResponseBody::OnDemand(Box::new(r))))
            }
            fetch::Body::Full(b) if b.is_empty() => ResponseBody::Done,
            fetch::Body::Full(b) => ResponseBody::Full(b),
        })
    }

    /// The whole body when it is already here, else None (and nothing is consumed).
    pub fn take_full(&mut self) -> Option<Bytes> {
        match std::mem::replace(self, ResponseBody::Done) {
            ResponseBody::Full(b) => Some(b),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The next batch, or None at the end. Fails with `Aborted` once `cancel` fires.
    /// The chunks here now, up to `MAX_BATCH` bytes (at least one chunk, waited for): handed over
    /// as they are, so that the only copy is the one into the JavaScript Buffer.
    pub async fn next_batch(&mut self, cancel: &CancellationToken) -> Result<Option<Vec<Bytes>>> {
        if let Some(full) = self.take_full() {
            return Ok(Some(vec![full]));
        }
        if let ResponseBody::Prefixed(..) = self {
            if let ResponseBody::Prefixed(start, rest) = std::mem::replace(self, ResponseBody::Done)
            {
                *self = *rest;
                return Ok(Some(vec![start]));
            }
        }
        if let ResponseBody::Bulk(_) = self {
            if let ResponseBody::Bulk(r) = std::mem::replace(self, ResponseBody::Done) {
                *self = ResponseBody::ReadAhead(read_ahead(*r, cancel.clone()));
            }
        }
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Error::Aborted),
            c = self.wait_chunk() => c,
        };
        let first = match first {
            Ok(Some(c)) => c,
            other => {
                *self = ResponseBody::Done;
                return other.map(|_| None);
            }
        };
        let mut size = first.len();
        let mut out = vec![first];
        while size < MAX_BATCH {
            match self.ready_chunk() {
                Some(Ok(Some(more))) => {
                    size += more.len();
                    out.push(more);
                }
                Some(Ok(None)) => {
                    *self = ResponseBody::Done;
                    break;
                }
                // An error right after data: deliver the data; the next read reports it.
                Some(Err(detail)) => {
                    *self = ResponseBody::Failed(detail);
                    break;
                }
                None => break,
            }
        }
        Ok(Some(out))
    }

    async fn wait_chunk(&mut self) -> Result<Option<Bytes>> {
        match self {
            ResponseBody::OnDemand(response) | ResponseBody::Bulk(response) => {
                let idle = http::response_timeout();
                match tokio::time::timeout(idle, response.chunk()).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(mid_stream(http::describe(&e))),
                    Err(_) => Err(mid_stream(format!("no data for {} ms", idle.as_millis()))),
                }
            }
            ResponseBody::ReadAhead(rx) => match rx.recv().await {
                Some(Ok(c)) => Ok(Some(c)),
                Some(Err(detail)) => Err(mid_stream(detail)),
                None => Ok(None),
            },
            ResponseBody::Failed(detail) => Err(mid_stream(std::mem::take(detail))),
            ResponseBody::Full(_) | ResponseBody::Prefixed(..) | ResponseBody::Done => Ok(None),
        }
    }

    /// A chunk that is already here, without waiting: None when nothing is ready.
    fn ready_chunk(&mut self) -> Option<Result<Option<Bytes>, String>> {
        match self {
            ResponseBody::OnDemand(response) | ResponseBody::Bulk(response) => {
                futures_util::FutureExt::now_or_never(response.chunk())
                    .map(|r| r.map_err(|e| http::describe(&e)))
            }
            ResponseBody::ReadAhead(rx) => match rx.try_recv() {
                Ok(item) => Some(item.map(Some)),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => Some(Ok(None)),
            },
            _ => None,
        }
    }
}

/// A small body of known size, whole, read as a stream is (`next_batch`): cut with `NETWORK`
/// when silent for the response timeout, `ABORT_ERR` when `cancel` fires, and read to its end
/// so that the connection goes back to the pool.
async fn read_small(response: reqwest::Response, cancel: &CancellationToken) -> Result<Bytes> {
    let mut body = ResponseBody::OnDemand(Box::new(response));
    let mut chunks: Vec<Bytes> = Vec::new();
    while let Some(batch) = body.next_batch(cancel).await? {
        chunks.extend(batch);
    }
    // Usually one chunk: handed on without a copy.
    Ok(match chunks.len() {
        0 | 1 => chunks.pop().unwrap_or_default(),
        _ => Bytes::from(chunks.concat()),
    })
}

/// Reads the upstream body on the runtime while JavaScript consumes earlier chunks. Ends (and
/// drops the connection) on abort, on error, on the idle timeout, or when the receiver is
/// dropped (cancel).
fn read_ahead(
    mut response: reqwest::Response,
    cancel: CancellationToken,
) -> mpsc::Receiver<Result<Bytes, String>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD_CHUNKS);
    let idle = http::response_timeout();
    crate::runtime::spawn_boxed(async move {
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tx.closed() => return,
                c = tokio::time::timeout(idle, response.chunk()) => c,
            };
            let item = match next {
                Ok(Ok(Some(c))) => Ok(c),
                Ok(Ok(None)) => return,
                Ok(Err(e)) => Err(http::describe(&e)),
                Err(_) => Err(format!("no data for {} ms", idle.as_millis())),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const CHUNK: usize = 64 * 1024;

    /// A bulk answer of `chunks` chunks whose body counts the chunks taken from it.
    fn counted(chunks: usize) -> (reqwest::Response, Arc<AtomicUsize>) {
        let taken = Arc::new(AtomicUsize::new(0));
        let seen = taken.clone();
        let stream = futures_util::stream::iter(0..chunks).map(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; CHUNK]))
        });
        let response = hyper::Response::builder()
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .expect("response");
        (reqwest::Response::from(response), taken)
    }

    #[tokio::test]
    async fn a_bulk_body_is_read_only_once_asked_for() {
        let cancel = CancellationToken::new();
        let (response, taken) = counted(64);
        let mut body = ResponseBody::new(fetch::Body::Stream(response), &cancel)
            .await
            .expect("body");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            taken.load(Ordering::SeqCst),
            0,
            "nothing taken off the wire before the first read (an answer dropped unread holds none of it)"
        );
        let mut total = 0;
        while let Some(batch) = body.next_batch(&cancel).await.expect("read") {
            total += batch.iter().map(Bytes::len).sum::<usize>();
        }
        assert_eq!(total, 64 * CHUNK, "then all of it, in order");
        assert_eq!(taken.load(Ordering::SeqCst), 64);
    }
}
