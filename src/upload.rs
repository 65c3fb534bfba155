//! A request's body on its way upstream, handed to the client a piece at a time and refused
//! once the request is given up. Handed over whole, the body sat in hyper's write buffer, and
//! its connection task wrote every byte of it after the caller aborted or a gateway's client
//! left: 20 MB went upstream 14 s after nobody wanted an answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::CancellationToken;

/// At most this much of the body is handed to hyper at once; its write buffer takes a few
/// pieces, so what is written after a cancel is bounded by that, not by the body.
pub const PIECE: usize = 64 * 1024;

/// Bytes that end the upload when `cancel` fires. The length is known, so the request keeps its
/// `content-length` framing; a cancelled upload fails the connection instead of ending short.
pub struct Upload {
    rest: Bytes,
    cancel: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
#[error("the request was given up while its body was being sent")]
pub struct GivenUp;

impl Upload {
    pub fn new(bytes: Bytes, cancel: CancellationToken) -> Upload {
        Upload {
            rest: bytes,
            cancel,
        }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = GivenUp;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, GivenUp>>> {
        // No waker is needed: the bytes are in memory, so hyper only stops asking while its
        // socket is full, and the caller's cancel already closes that connection.
        if self.cancel.is_cancelled() {
            return Poll::Ready(Some(Err(GivenUp)));
        }
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let take = self.rest.len().min(PIECE);
        Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(take)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn hands_the_body_over_in_pieces_of_known_length() {
        let bytes = Bytes::from(vec![7u8; PIECE * 2 + 10]);
        let mut upload = Upload::new(bytes.clone(), CancellationToken::new());
        assert_eq!(upload.size_hint().exact(), Some(bytes.len() as u64));
        let mut sizes = Vec::new();
        let mut seen = Vec::new();
        while let Some(frame) = upload.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            sizes.push(data.len());
            seen.extend_from_slice(&data);
        }
        assert_eq!(sizes, vec![PIECE, PIECE, 10]);
        assert_eq!(seen, bytes.to_vec());
        assert!(upload.is_end_stream());
    }

    #[tokio::test]
    async fn refuses_the_rest_once_cancelled() {
        let cancel = CancellationToken::new();
        let mut upload = Upload::new(Bytes::from(vec![1u8; PIECE * 3]), cancel.clone());
        assert!(upload.frame().await.unwrap().is_ok());
        cancel.cancel();
        assert!(upload.frame().await.unwrap().is_err());
    }
}
