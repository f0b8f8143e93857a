//! Differential test: the codec against hyper's HTTP/1.1 client, on generated response bytes.
//!
//! Each case is an HTTP/1.1 response (interim heads, status line, headers, a body framed by
//! Content-Length, chunked with extensions and trailers, or the connection's close), often
//! mutated (bare LF, bad or huge hex, duplicate or odd Content-Length, stray bytes,
//! truncation). The same bytes go to
//!
//! - the codec, as `conn.rs` drives it (`parse_final_head`, then `BodyDecoder` until the body
//!   ends or the bytes run out), fed in randomly cut reads; and to
//! - `hyper::client::conn::http1` over an in-memory duplex stream, after it sent its request;
//!
//! and both must agree: both refuse the response, or both accept it with the same status,
//! version, headers, body bytes and trailers.
//!
//! Where the two differ by design, the case is counted and excluded, never compared:
//!
//! - **HTTP/1.0 with Transfer-Encoding** (on a response that has a body): hyper refuses it.
//!   The codec follows RFC 9112 section 6.1: the framing is faulty, so the message is
//!   processed (Transfer-Encoding wins) and the connection closed after it.
//! - **101 Switching Protocols**: hyper hands the connection over as an upgrade; the proxy
//!   answers a 101 it did not ask for with a 502 and never reads a body after one.
//! - **Content-Length alongside Transfer-Encoding**: the codec removes the Content-Length
//!   (RFC 9112 section 6.3: passing both on would let the client frame the body differently);
//!   hyper keeps it. The headers are compared without it; bodies and verdicts as they are.
//! - **Hop-by-hop headers**: the codec leaves them out of the head (the proxy never passes
//!   them on); hyper's headers are compared after the proxy's own stripping.
//! - **Limits**: the codec takes at most 64 KiB and 128 fields per head or trailer section and
//!   16 interim heads; hyper ~400 KiB and 100 fields per head, 16 KiB and 100 fields per
//!   trailer section, any number of interim heads. Cases stay far below all of them.
//!
//! `PROPTEST_CASES` sets the number of cases (default 512) and `PROPTEST_RNG_SEED` the seed
//! (default fixed, so CI runs the same cases every time). With `DIFFERENTIAL_LIST` set, every
//! disagreement is printed instead of stopping at the first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec::{self, BodyDecoder, Decoded, Head};
use crate::proxy::headers;

/// What a client learns from a response: everything the proxy passes on.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

/// The codec's reading of `wire`, delivered in reads cut at `cuts`, as `conn.rs` reads a
/// response: heads until the final one, then the body until it ends or the bytes run out.
fn codec_reads(wire: &[u8], cuts: &[Index], method: &Method) -> Result<Outcome, String> {
    let mut reads = cut(wire, cuts).into_iter();
    let mut buf = BytesMut::new();
    let mut interim = 0;
    let head = loop {
        match codec::parse_final_head(&mut buf, method, &mut interim, &mut Default::default()) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match reads.next() {
            Some(read) => buf.extend_from_slice(read),
            None => return Err("closed before a response head".into()),
        }
    };
    let Head {
        status,
        version,
        headers,
        framing,
        ..
    } = head;
    let mut decoder = BodyDecoder::new(framing);
    let mut body = Vec::new();
    let mut trailers = None;
    loop {
        match decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            Decoded::Frame(frame) => match frame.into_data() {
                Ok(data) => body.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Decoded::End => break,
            Decoded::NeedMore => match reads.next() {
                Some(read) => buf.extend_from_slice(read),
                None if decoder.close() => break,
                None => return Err("closed before the body ended".into()),
            },
        }
    }
    Ok(Outcome {
        status,
        version,
        headers,
        body,
        trailers,
    })
}

/// `wire` cut into non-empty reads (an empty read would mean the connection closed).
pub(crate) fn cut<'a>(wire: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
    at.push(0);
    at.push(wire.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &wire[w[0]..w[1]]).collect()
}

/// hyper's client reading of `wire`, sent by a peer once it has read hyper's request.
async fn hyper_reads(wire: Vec<u8>, method: Method) -> Result<Outcome, String> {
    let (client, mut replica) = tokio::io::duplex(1 << 20);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tokio::spawn(async move {
        // Answer only after the request: bytes that come first are an error of their own.
        let mut request = Vec::new();
        let mut chunk = [0u8; 512];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match replica.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = replica.write_all(&wire).await;
        let _ = replica.shutdown().await;
        // Dropping the stream ends hyper's reads once it has taken what was written.
    });
    let request = Request::builder()
        .method(method)
        .uri("/")
        .header(header::HOST, "replica")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, mut incoming) = response.into_parts();
    let mut body = Vec::new();
    let mut trailers = None;
    while let Some(frame) = incoming.frame().await {
        match frame.map_err(|e| e.to_string())?.into_data() {
            Ok(data) => body.extend_from_slice(&data),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(Outcome {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
        trailers,
    })
}

/// Why a case is not compared; see the module documentation.
fn excluded(wire: &[u8], method: &Method) -> Option<&'static str> {
    let mut buf = BytesMut::from(wire);
    let head =
        codec::parse_final_head(&mut buf, method, &mut 0, &mut Default::default()).ok()??;
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return Some("101");
    }
    if head.version == Version::HTTP_10
        && head.transfer_encoding
        && head.framing != codec::BodyFraming::Empty
    {
        return Some("http/1.0 with transfer-encoding");
    }
    None
}

/// One generated case.
#[derive(Clone)]
struct Case {
    method: Method,
    wire: Vec<u8>,
    cuts: Vec<Index>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bytes print as an escaped byte string, readable in a failure report.
        write!(
            f,
            "{} {:?}",
            self.method,
            Bytes::copy_from_slice(&self.wire)
        )
    }
}

/// How many cases were compared, and how they came out.
#[derive(Default)]
struct Tally {
    accepted: AtomicUsize,
    refused: AtomicUsize,
    excluded: AtomicUsize,
    /// `DIFFERENTIAL_LIST` is set: print every disagreement instead of stopping at the first.
    list: bool,
    disagreed: AtomicUsize,
}

fn check(case: &Case, rt: &tokio::runtime::Runtime, tally: &Tally) -> Result<(), TestCaseError> {
    if excluded(&case.wire, &case.method).is_some() {
        tally.excluded.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let ours = codec_reads(&case.wire, &case.cuts, &case.method);
    let theirs = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                hyper_reads(case.wire.clone(), case.method.clone()),
            )
            .await
        })
        .map_err(|_| TestCaseError::fail("hyper neither answered nor failed in 10 s"))?;
    let wire = Bytes::copy_from_slice(&case.wire);
    let disagreement = match (ours, theirs) {
        (Ok(ours), Ok(mut theirs)) => {
            // The codec drops a Content-Length sent alongside Transfer-Encoding; hyper keeps it.
            if theirs.headers.contains_key(header::TRANSFER_ENCODING)
                && !ours.headers.contains_key(header::CONTENT_LENGTH)
            {
                theirs.headers.remove(header::CONTENT_LENGTH);
            }
            // The codec leaves hop-by-hop headers out, as the proxy would strip them.
            headers::strip_hop_by_hop(&mut theirs.headers, false);
            if ours == theirs {
                tally.accepted.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            format!("different responses from {wire:?}:\n  codec: {ours:?}\n  hyper: {theirs:?}")
        }
        (Err(_), Err(_)) => {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        (ours, theirs) => {
            format!("one refuses {wire:?}:\n  codec: {ours:?}\n  hyper: {theirs:?}")
        }
    };
    let report = format!("{} {disagreement}", case.method);
    if tally.list {
        eprintln!("{report}");
        tally.disagreed.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    Err(TestCaseError::fail(report))
}

// ---- the grammar ----
//
// Weighted choices go through `weighted` rather than `prop_oneof!`, whose `weight => strategy`
// arms rustfmt cannot format.

pub(crate) type Choice<T> = (u32, BoxedStrategy<T>);

/// One of `choices`, each as likely as its weight says.
pub(crate) fn weighted<T: std::fmt::Debug + 'static>(choices: Vec<Choice<T>>) -> BoxedStrategy<T> {
    Union::new_weighted(choices).boxed()
}

/// A choice that is always `value`.
pub(crate) fn just<T: Clone + std::fmt::Debug + 'static>(weight: u32, value: T) -> Choice<T> {
    (weight, Just(value).boxed())
}

/// Header fields that say nothing about framing.
pub(crate) fn plain_field() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "content-type",
        "X-Request-Id",
        "server",
        "connection",
        "cache-control",
        "x-empty",
        "Trailer",
    ]);
    let value = prop::sample::select(vec![
        "text/event-stream",
        "abc 123",
        "",
        "close",
        "keep-alive",
        "no-cache, no-store",
        "\tpadded\t",
        "grpc-status",
    ]);
    (name, value).prop_map(|(n, v)| format!("{n}: {v}"))
}

/// The status line: version, code, reason.
fn status_line() -> impl Strategy<Value = String> {
    let version = weighted(vec![just(9, "HTTP/1.1"), just(1, "HTTP/1.0")]);
    let code = prop::sample::select(vec![200u16, 201, 204, 206, 304, 400, 404, 500, 502, 503]);
    let reason = prop::sample::select(vec!["OK", "", "Whatever It Is"]);
    (version, code, reason).prop_map(|(v, c, r)| format!("{v} {c} {r}"))
}

/// Zero to two interim heads.
fn interim_heads() -> impl Strategy<Value = String> {
    let one = (
        prop::sample::select(vec![100u16, 102, 103]),
        prop::option::of(Just("Link: </style.css>; rel=preload")),
    )
        .prop_map(|(code, field)| match field {
            Some(f) => format!("HTTP/1.1 {code} Interim\r\n{f}\r\n\r\n"),
            None => format!("HTTP/1.1 {code} Interim\r\n\r\n"),
        });
    prop::collection::vec(one, 0..=2).prop_map(|heads| heads.concat())
}

/// Content-Length fields for a body of `n` bytes: usually right, sometimes odd or wrong.
fn content_length(n: usize) -> impl Strategy<Value = Vec<String>> {
    let m = n + 1;
    let field = |value: String| format!("Content-Length: {value}");
    let mut choices = vec![just(6, vec![field(n.to_string())])];
    let odd = [
        format!("{n}\t"),
        format!("{n}, {n}"),
        format!("{n},{m}"),
        format!("000{n}"),
        format!("+{n}"),
        format!("{n} "),
        format!("{n}\u{a0}"),
        format!("\u{a0}{n}"),
        String::new(),
        format!("{n}, "),
        format!("0x{n}"),
        "18446744073709551613".into(),
        "18446744073709551614".into(),
        "18446744073709551615".into(),
        "18446744073709551616".into(),
        m.to_string(),
        n.saturating_sub(1).to_string(),
    ];
    choices.extend(odd.into_iter().map(|v| just(1, vec![field(v)])));
    choices.push(just(1, vec![field(n.to_string()), field(n.to_string())]));
    choices.push(just(1, vec![field(n.to_string()), field(m.to_string())]));
    choices.push(just(1, vec![format!("content-length:  {n}")]));
    weighted(choices)
}

/// Transfer-Encoding fields: chunked last, or not.
fn transfer_encoding() -> impl Strategy<Value = Vec<&'static str>> {
    let mut choices = vec![just(8, vec!["Transfer-Encoding: chunked"])];
    let odd = [
        vec!["transfer-encoding: Chunked "],
        vec!["Transfer-Encoding: gzip, chunked"],
        vec!["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
        vec!["Transfer-Encoding: chunked", "Transfer-Encoding: gzip"],
        vec!["Transfer-Encoding: chunked, gzip"],
        vec!["Transfer-Encoding: gzip"],
        vec!["Transfer-Encoding: "],
        vec!["Transfer-Encoding: chunked", "Content-Length: 3"],
        vec!["Transfer-Encoding: chunked\u{a0}"],
    ];
    choices.extend(odd.into_iter().map(|v| just(1, v)));
    weighted(choices)
}

/// One chunk-size line's spelling of `size`: case, leading zeros, whitespace, extensions, and
/// sometimes something that is not a size at all.
fn size_line(size: usize) -> impl Strategy<Value = String> {
    let zeros = weighted(vec![
        just(8, 0usize),
        (1, (1..4usize).boxed()),
        (1, (15..24usize).boxed()),
    ]);
    let hex = (any::<bool>(), zeros).prop_map(move |(upper, zeros)| {
        let hex = if upper {
            format!("{size:X}")
        } else {
            format!("{size:x}")
        };
        format!("{}{hex}", "0".repeat(zeros))
    });
    let not_a_size = prop::sample::select(vec![
        "zz",
        "-1",
        "0x5",
        "+5",
        " 5",
        "",
        "ffffffffffffffff",
        "10000000000000000",
        "fffffffffffffffff",
        "5 5",
        "g",
    ])
    .prop_map(str::to_owned);
    let digits = weighted(vec![(12, hex.boxed()), (1, not_a_size.boxed())]);
    let lws = weighted(vec![just(8, ""), just(1, " "), just(1, "\t \t")]);
    let long_ext = (1000..1200usize).prop_map(|n| format!(";{}", "e".repeat(n)));
    let ext = weighted(vec![
        just(6, String::new()),
        just(1, ";name".to_owned()),
        just(1, ";a=b; c=\"d e\"".to_owned()),
        just(1, ";\u{e9}\u{0}".to_owned()),
        just(1, ";x\ry".to_owned()),
        just(1, ";x\ny".to_owned()),
        (1, long_ext.boxed()),
    ]);
    let eol = weighted(vec![
        just(12, "\r\n"),
        just(1, "\n"),
        just(1, "\r"),
        just(1, "\r\r\n"),
    ]);
    (digits, lws, ext, eol).prop_map(|(d, l, e, eol)| format!("{d}{l}{e}{eol}"))
}

/// A chunked body carrying `data`, cut into chunks at random, with a trailer section.
fn chunked_body(data: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let cuts = prop::collection::vec(any::<Index>(), 0..4);
    let trailer = weighted(vec![
        just(4, "grpc-status: 0"),
        just(2, "x-checksum: abc"),
        just(1, "bad trailer"),
        just(1, "x-lf: 1\nx-next: 2"),
        just(1, ""),
    ]);
    let trailers = weighted(vec![
        just(3, Vec::new()),
        (2, prop::collection::vec(trailer, 1..3).boxed()),
    ]);
    let data_end = weighted(vec![
        just(12, "\r\n"),
        just(1, "\n"),
        just(1, ""),
        just(1, "x\r\n"),
    ]);
    let last_end = weighted(vec![just(12, "\r\n"), just(1, "\n"), just(1, "\r")]);
    (cuts, trailers, data_end, last_end).prop_flat_map(
        move |(cuts, trailers, data_end, last_end)| {
            let pieces: Vec<Vec<u8>> = cut(&data, &cuts).into_iter().map(<[u8]>::to_vec).collect();
            let lines: Vec<_> = pieces.iter().map(|p| size_line(p.len())).collect();
            (lines, size_line(0)).prop_map(move |(lines, last)| {
                let mut out = Vec::new();
                for (line, piece) in lines.iter().zip(&pieces) {
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(data_end.as_bytes());
                }
                out.extend_from_slice(last.as_bytes());
                for t in &trailers {
                    out.extend_from_slice(t.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(last_end.as_bytes());
                out
            })
        },
    )
}

/// The framing fields and the body bytes after the head.
pub(crate) fn framed_body() -> impl Strategy<Value = (Vec<String>, Vec<u8>)> {
    let byte = weighted(vec![
        (4, (b'a'..=b'z').boxed()),
        (1, any::<u8>().boxed()),
        just(1, b'\r'),
        just(1, b'\n'),
    ]);
    prop::collection::vec(byte, 0..48).prop_flat_map(|data| {
        let n = data.len();
        let by_length = {
            let data = data.clone();
            content_length(n).prop_map(move |fields| (fields, data.clone()))
        };
        let chunked = (transfer_encoding(), chunked_body(data.clone()))
            .prop_map(|(te, body)| (te.into_iter().map(str::to_owned).collect(), body));
        let until_close = Just((Vec::new(), data));
        weighted(vec![
            (4, by_length.boxed()),
            (5, chunked.boxed()),
            (1, until_close.boxed()),
        ])
    })
}

/// A change to the bytes of a response.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    /// The CRLF at this index among all of them loses its CR.
    BareLf(Index),
    Delete(Index),
    Insert(Index, u8),
    Replace(Index, u8),
    /// A whole line inserted after the line break at this index among all of them.
    InsertLine(Index, &'static str),
    Truncate(Index),
}

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(b"\r\n \t;:,0f9Gz\x00\x7f\x80\xff".to_vec());
    let byte = weighted(vec![(1, interesting.boxed()), (1, any::<u8>().boxed())]);
    let line = prop::sample::select(vec![
        "Content-Length: 7",
        "Content-Length: 0",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: identity",
        "Connection: close",
        " folded continuation",
        "no colon here",
        "x-sp : 1",
        "0",
        "",
    ]);
    let at = any::<Index>;
    weighted(vec![
        (3, at().prop_map(Mutation::BareLf).boxed()),
        (1, at().prop_map(Mutation::Delete).boxed()),
        (
            2,
            (at(), byte.clone())
                .prop_map(|(i, b)| Mutation::Insert(i, b))
                .boxed(),
        ),
        (
            2,
            (at(), byte)
                .prop_map(|(i, b)| Mutation::Replace(i, b))
                .boxed(),
        ),
        (
            2,
            (at(), line)
                .prop_map(|(i, l)| Mutation::InsertLine(i, l))
                .boxed(),
        ),
        (1, at().prop_map(Mutation::Truncate).boxed()),
    ])
}

pub(crate) fn apply(wire: &mut Vec<u8>, m: &Mutation) {
    let breaks = |wire: &[u8], crlf: bool| -> Vec<usize> {
        (0..wire.len())
            .filter(|&i| wire[i] == b'\n' && (!crlf || (i > 0 && wire[i - 1] == b'\r')))
            .collect()
    };
    if wire.is_empty() {
        return;
    }
    match m {
        Mutation::BareLf(i) => {
            let at = breaks(wire, true);
            if !at.is_empty() {
                wire.remove(at[i.index(at.len())] - 1);
            }
        }
        Mutation::Delete(i) => {
            wire.remove(i.index(wire.len()));
        }
        Mutation::Insert(i, b) => wire.insert(i.index(wire.len() + 1), *b),
        Mutation::Replace(i, b) => {
            let at = i.index(wire.len());
            wire[at] = *b;
        }
        Mutation::InsertLine(i, line) => {
            let at = breaks(wire, false);
            if !at.is_empty() {
                let after = at[i.index(at.len())] + 1;
                let text = format!("{line}\r\n");
                wire.splice(after..after, text.bytes());
            }
        }
        Mutation::Truncate(i) => wire.truncate(i.index(wire.len())),
    }
}

fn case() -> impl Strategy<Value = Case> {
    let method = weighted(vec![just(6, Method::GET), just(1, Method::HEAD)]);
    let fields = prop::collection::vec(plain_field(), 0..4);
    let mutations = weighted(vec![
        just(2, Vec::new()),
        (3, prop::collection::vec(mutation(), 1..3).boxed()),
    ]);
    let cuts = prop::collection::vec(any::<Index>(), 0..6);
    let head = (interim_heads(), status_line(), fields);
    (method, head, framed_body(), mutations, cuts).prop_map(
        |(method, (interim, status, fields), (framing, body), mutations, cuts)| {
            let mut wire = interim.into_bytes();
            wire.extend_from_slice(status.as_bytes());
            wire.extend_from_slice(b"\r\n");
            for field in fields.iter().chain(&framing) {
                wire.extend_from_slice(field.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&body);
            for m in &mutations {
                apply(&mut wire, m);
            }
            Case { method, wire, cuts }
        },
    )
}

#[test]
fn codec_and_hyper_agree_on_generated_responses() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5717_c4ad);
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tally = Tally {
        list: std::env::var_os("DIFFERENTIAL_LIST").is_some(),
        ..Tally::default()
    };
    let started = std::time::Instant::now();
    let result = TestRunner::new(config).run(&case(), |case| check(&case, &rt, &tally));
    let (accepted, refused, excluded) = (
        tally.accepted.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.excluded.load(Ordering::Relaxed),
    );
    eprintln!(
        "{cases} cases in {:?}: {accepted} accepted by both, {refused} refused by both, \
         {excluded} excluded",
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(
        tally.disagreed.load(Ordering::Relaxed),
        0,
        "disagreements listed above"
    );
    // The grammar must exercise both verdicts, or agreement means little.
    assert!(accepted >= cases as usize / 5, "too few accepted cases");
    assert!(refused >= cases as usize / 5, "too few refused cases");
}

/// Cases the grammar does not reach (limits, exact boundaries) or that document a quirk.
#[test]
fn codec_and_hyper_agree_on_hand_picked_responses() {
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: Vec<(Method, String, bool)> = vec![
        // 16 KiB of chunk extensions per body, not 4 kB per line.
        (
            Method::GET,
            format!("{chunked}5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(10_000)),
            true,
        ),
        (
            Method::GET,
            format!(
                "{chunked}{}0\r\n\r\n",
                format!("1;{}\r\na\r\n", "e".repeat(9_000)).repeat(2)
            ),
            false,
        ),
        // Leading zeros, any number of them.
        (
            Method::GET,
            format!("{chunked}000000000000000000005\r\nhello\r\n0000000000000000000\r\n\r\n"),
            true,
        ),
        // The largest Content-Length hyper takes, and the first it refuses; with HEAD, no
        // body is read whatever the length says.
        (
            Method::GET,
            "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551614\r\n\r\n".into(),
            false,
        ),
        (
            Method::HEAD,
            "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551614\r\n\r\n".into(),
            true,
        ),
        // The body's final empty line must be CRLF.
        (Method::GET, format!("{chunked}0\r\n\n"), false),
        // A bare LF inside a trailer line is kept in the line, which httparse then splits:
        // accepted when it ends the section's last field (hyper's quirk, mirrored).
        (Method::GET, format!("{chunked}0\r\nx-a: 1\n\r\n\r\n"), true),
        (
            Method::GET,
            format!("{chunked}0\r\nx-a: 1\nx-b: 2\r\n\r\n"),
            false,
        ),
        // Interim heads, then the response.
        (
            Method::GET,
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                .into(),
            true,
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (method, wire, accepted) in cases {
        let case = Case {
            method,
            wire: wire.into_bytes(),
            cuts: Vec::new(),
        };
        let tally = Tally::default();
        check(&case, &rt, &tally).unwrap_or_else(|e| panic!("{e}"));
        let verdict = tally.accepted.load(Ordering::Relaxed) == 1;
        assert_eq!(verdict, accepted, "{case:?}");
    }
}
