//! Content codings of an answer. The clients ask for gzip (`accept-encoding: gzip`) and undo it
//! here, only when it is the body's one coding: reqwest's own decoder (tower-http's) undid the
//! first `Content-Encoding` line and removed them all, so a body compressed twice, or `br` then
//! `gzip`, was handed on still coded and labelled plain. The gateway could then neither search it
//! for an echoed credential (the client decodes it by hand and finds the pool's token) nor see
//! that it was coded. Any other coding is left as it came, with its `Content-Encoding` lines, for
//! the caller to see.

use std::io;

use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};
use tokio::io::AsyncBufReadExt;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::error::{Error, Result};

/// What the clients ask for, sent unless the request names its own.
pub const ACCEPTED: &str = "gzip";

/// How much decoded body is handed on at a time: a gzip bomb (a thousandfold ratio) fills this
/// and waits to be read, rather than filling memory.
const DECODED_CHUNK: usize = 64 * 1024;

/// The codings a body is in, in the order applied, from every `Content-Encoding` value (`identity`
/// and empty list members left out).
pub fn codings<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    values
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .collect()
}

/// Whether the codings are gzip alone, the one this program undoes (`x-gzip` is its old name, and
/// coding names are case-insensitive: RFC 9110 8.4.1).
fn gzip_alone(codings: &[&str]) -> bool {
    matches!(codings, [one] if one.eq_ignore_ascii_case("gzip") || one.eq_ignore_ascii_case("x-gzip"))
}

/// A coding's name as a message says it: a registered one as it is, anything else is the
/// server's text, which held the credential in hex or base64 (`lib/answer-head.mjs` says the same).
fn said_coding(coding: &str) -> &'static str {
    const REGISTERED: [&str; 8] = [
        "chunked",
        "gzip",
        "x-gzip",
        "deflate",
        "br",
        "zstd",
        "compress",
        "x-compress",
    ];
    REGISTERED
        .into_iter()
        .find(|known| coding.eq_ignore_ascii_case(known))
        .unwrap_or("a coding of no registered name")
}

/// The answer as it is handed on: refused when its framing names a transfer coding besides
/// `chunked` (hyper undoes only the chunking), else `decoded`. Nothing asks for one (no `TE` is
/// sent, RFC 9112 6.1): a body sent in `Transfer-Encoding: gzip` went on compressed, labelled
/// plain, past the gateway's check of content codings, an echoed credential in it.
pub fn received(response: reqwest::Response, what: &'static str) -> Result<reqwest::Response> {
    let named = response
        .headers()
        .get_all(reqwest::header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"));
    let framing = codings(named);
    if framing.iter().any(|c| !c.eq_ignore_ascii_case("chunked")) {
        return Err(Error::Network {
            what,
            detail: format!(
                "the answer is framed in transfer-encoding {}, which nothing asked for (only chunked is read): its body cannot be handed on as sent",
                framing.iter().map(|c| said_coding(c)).collect::<Vec<_>>().join(", ")
            ),
            never_connected: false,
        });
    }
    Ok(decoded(response))
}

/// The answer with its body decoded when gzip is its one coding (its `Content-Encoding` and
/// `Content-Length` removed, as they described the coded bytes); any other answer as it came.
pub fn decoded(response: reqwest::Response) -> reqwest::Response {
    let named = response
        .headers()
        .get_all(reqwest::header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"));
    if !gzip_alone(&codings(named)) {
        return response;
    }
    let (mut head, body) = hyper::http::Response::<reqwest::Body>::from(response).into_parts();
    head.headers.remove(reqwest::header::CONTENT_ENCODING);
    let coded = head
        .headers
        .remove(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if let Some(n) = coded {
        head.extensions.insert(CodedLength(n));
    }
    let coded = http_body_util::BodyDataStream::new(body).map_err(io::Error::other);
    reqwest::Response::from(hyper::http::Response::from_parts(head, gunzip(coded)))
}

/// The length of the coded body a decoded answer came as (its `Content-Length`): a small one is
/// read whole before the answer is handed on, as a small plain body is (`body::SMALL_BODY`).
#[derive(Clone, Copy)]
struct CodedLength(u64);

/// How long the body of `response` was as sent, when it was decoded here and said so.
pub fn coded_length(response: &reqwest::Response) -> Option<u64> {
    response.extensions().get::<CodedLength>().map(|c| c.0)
}

/// A failure to decode the body itself (not of the connection under it).
#[derive(Debug, thiserror::Error)]
#[error("the body is not valid gzip ({0})")]
pub struct Undecodable(String);

fn gunzip(
    coded: impl futures_util::Stream<Item = io::Result<Bytes>> + Send + Sync + Unpin + 'static,
) -> reqwest::Body {
    let mut reader = StreamReader::new(coded);
    let opened = async move {
        // An empty body (a HEAD's, a 204's) is no gzip stream, and is handed on empty.
        let empty = reader.fill_buf().await?.is_empty();
        Ok::<_, io::Error>((!empty).then_some(reader))
    };
    let decoded = stream::once(opened)
        .map(|opened| match opened {
            Ok(Some(reader)) => {
                let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(reader);
                // Members written one after another are one body (RFC 1952 2.2), as Node's
                // fetch reads them: the decoder stopped at the first, and the rest was lost
                // without an error.
                decoder.multiple_members(true);
                ReaderStream::with_capacity(decoder, DECODED_CHUNK)
                    .map_err(undecodable)
                    .boxed()
            }
            Ok(None) => stream::empty().boxed(),
            Err(e) => stream::iter([Err(e)]).boxed(),
        })
        .flatten();
    reqwest::Body::wrap_stream(decoded)
}

/// The connection's own failures pass as they are; the decoder's are said to be the body's.
fn undecodable(e: io::Error) -> io::Error {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<reqwest::Error>())
    {
        e
    } else {
        io::Error::other(Undecodable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(plain: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(plain).unwrap();
        encoder.finish().unwrap()
    }

    fn answer(codings: &[&str], body: Vec<u8>) -> reqwest::Response {
        let mut builder = hyper::Response::builder().status(200);
        for c in codings {
            builder = builder.header("content-encoding", *c);
        }
        let length = body.len().to_string();
        let response = builder
            .header("content-length", length)
            .body(reqwest::Body::from(body))
            .unwrap();
        reqwest::Response::from(response)
    }

    async fn read(mut response: reqwest::Response) -> std::result::Result<Vec<u8>, String> {
        let mut out = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(c)) => out.extend_from_slice(&c),
                Ok(None) => return Ok(out),
                Err(e) => return Err(crate::http::describe(&e)),
            }
        }
    }

    #[test]
    fn codings_are_read_across_lines_and_lists_without_identity() {
        assert_eq!(codings([" identity ,", "gzip, br", ""]), ["gzip", "br"]);
        assert!(gzip_alone(&codings(["X-GZIP"])));
        assert!(gzip_alone(&codings(["identity", "gzip"])));
        assert!(!gzip_alone(&codings(["gzip", "gzip"])));
        assert!(!gzip_alone(&codings(["gzip, gzip"])));
        assert!(!gzip_alone(&codings(["br"])));
        assert!(!gzip_alone(&codings([])));
    }

    #[tokio::test]
    async fn gzip_alone_is_undone_and_its_coding_and_length_removed() {
        let plain = b"{\"a\":\"".iter().chain([b'x'; 300_000].iter()).copied();
        let plain: Vec<u8> = plain.chain(*b"\"}").collect();
        let coded = gzip(&plain);
        let response = decoded(answer(&["gzip"], coded.clone()));
        assert!(response.headers().get("content-encoding").is_none());
        assert!(response.headers().get("content-length").is_none());
        assert_eq!(coded_length(&response), Some(coded.len() as u64));
        assert_eq!(read(response).await.unwrap(), plain);
    }

    #[tokio::test]
    async fn a_body_coded_twice_is_left_as_it_came_with_every_line() {
        let twice = gzip(&gzip(b"secret"));
        let response = decoded(answer(&["gzip", "gzip"], twice.clone()));
        let said: Vec<_> = response
            .headers()
            .get_all("content-encoding")
            .iter()
            .collect();
        assert_eq!(said, ["gzip", "gzip"]);
        assert_eq!(read(response).await.unwrap(), twice);
    }

    #[tokio::test]
    async fn an_empty_body_stays_empty_and_a_bad_one_is_a_decoding_failure() {
        assert_eq!(
            read(decoded(answer(&["gzip"], Vec::new()))).await.unwrap(),
            b""
        );
        let failed = read(decoded(answer(&["gzip"], b"not gzip".to_vec()))).await;
        let message = failed.unwrap_err();
        assert!(message.contains("not valid gzip"), "{message}");
    }

    #[tokio::test]
    async fn members_one_after_another_are_one_body() {
        let two = [gzip(b"first half, "), gzip(b"second half")].concat();
        let whole = read(decoded(answer(&["gzip"], two))).await.unwrap();
        assert_eq!(whole, b"first half, second half");
    }

    #[test]
    fn a_transfer_coding_besides_chunked_is_refused() {
        let framed = |codings: &[&str]| {
            let mut builder = hyper::Response::builder().status(200);
            for c in codings {
                builder = builder.header("transfer-encoding", *c);
            }
            let response = reqwest::Response::from(builder.body(reqwest::Body::from("x")).unwrap());
            received(response, "the API").map(|_| ())
        };
        assert!(framed(&[]).is_ok());
        assert!(framed(&["chunked"]).is_ok());
        assert!(framed(&[" Chunked "]).is_ok());
        for refused in [
            &["gzip, chunked"][..],
            &["gzip"],
            &["gzip", "chunked"],
            &["x-custom"],
        ] {
            let e = framed(refused).unwrap_err();
            assert_eq!(e.code(), "NETWORK", "{refused:?}");
            assert!(e.to_string().contains("transfer-encoding"), "{e}");
        }
        // Only registered names are said: a server's own text held the token in hex.
        let hex = "736b2d616e742d6f617430312d736563726574";
        let e = framed(&[&format!("GZIP, {hex}, chunked")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("transfer-encoding gzip, a coding of no registered name, chunked"),
            "{e}"
        );
        assert!(!e.to_string().contains(hex), "{e}");
    }

    #[tokio::test]
    async fn a_bomb_is_handed_on_in_bounded_pieces() {
        let zeros = gzip(&vec![0u8; 8 * 1024 * 1024]);
        assert!(zeros.len() < 64 * 1024);
        let mut response = decoded(answer(&["gzip"], zeros));
        let mut total = 0;
        while let Some(piece) = response.chunk().await.unwrap() {
            assert!(piece.len() <= DECODED_CHUNK);
            total += piece.len();
        }
        assert_eq!(total, 8 * 1024 * 1024);
    }
}
