//! Differential test: the client-side HTTP/1.1 server against hyper's, on generated request
//! bytes.
//!
//! Each case is one or two pipelined requests (request line, Host, fields, a body framed by
//! Content-Length or chunked with extensions and trailers, or no framing at all), often
//! mutated with the response differential's mutations (bare LF, stray or replaced bytes,
//! inserted lines, truncation). The same bytes go to [`super::Connection`] and to
//! `hyper::server::conn::http1` over in-memory duplex streams, in time that advances by
//! itself once both sides wait. Both must agree on every request their service saw (method,
//! target, version, headers, body or its failure) and on the answers: a request's 200, or a
//! refusal. Which refusal may differ by design: hyper answers any bad version token with 505,
//! this server only one that names a version (`HTTP/2.0`), and 400 for other garbage.
//!
//! `PROPTEST_CASES` sets the number of cases (default 384); the seed is fixed so CI runs the
//! same cases every time (`PROPTEST_RNG_SEED` to change it). With `DIFFERENTIAL_LIST` set,
//! every disagreement is printed instead of stopping at the first.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::body::ProxyBody;
use crate::proxy::client_body::ClientBody;
use crate::proxy::upstream::differential::{
    apply, framed_body, just, mutation, plain_field, weighted, Mutation,
};

/// A request as the service saw it.
#[derive(Debug, PartialEq)]
struct Seen {
    method: String,
    target: String,
    version: Version,
    headers: HeaderMap,
    /// The body, or `None` when it failed.
    body: Option<Vec<u8>>,
}

/// What a client and the service learn from one connection.
#[derive(Debug, PartialEq)]
struct Outcome {
    seen: Vec<Seen>,
    /// Per answer: `true` for a request's 200, `false` for a refusal.
    answers: Vec<bool>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn record<B>(log: Log, req: Request<B>)
where
    B: http_body::Body<Data = Bytes>,
{
    let (parts, body) = req.into_parts();
    let body = body.collect().await.ok().map(|b| b.to_bytes().to_vec());
    log.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers,
        body,
    });
}

/// The answers in what the server wrote: each head's status, bodies skipped by their length.
fn answers(mut out: &[u8]) -> Vec<bool> {
    let mut answers = Vec::new();
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(len)) = resp.parse(out) else {
            return answers;
        };
        let code = resp.code.unwrap_or(0);
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
            .unwrap_or(0usize);
        if code != 100 {
            answers.push(code == 200);
        }
        out = &out[(len + length).min(out.len())..];
    }
}

/// Sends `wire`, waits until the server has nothing more to say, then closes.
async fn exchange<F>(wire: &[u8], serve: F) -> Vec<u8>
where
    F: FnOnce(tokio::io::DuplexStream) -> tokio::task::JoinHandle<()>,
{
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let task = serve(server);
    client.write_all(wire).await.unwrap();
    let mut out = Vec::new();
    // Time is paused: the timeout fires as soon as both sides are waiting.
    let _ = tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut out)).await;
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    out
}

async fn ours(wire: Vec<u8>) -> Outcome {
    let log = Log::default();
    let service_log = log.clone();
    let out = exchange(&wire, move |io| {
        tokio::spawn(async move {
            let service = move |req: Request<ClientBody>| {
                let log = service_log.clone();
                async move {
                    record(log, req).await;
                    Ok::<_, Infallible>(Response::new(ProxyBody::empty()))
                }
            };
            let _ = super::Connection::new(io, service).await;
        })
    })
    .await;
    let seen = std::mem::take(&mut *log.lock().unwrap());
    Outcome {
        seen,
        answers: answers(&out),
    }
}

async fn hypers(wire: Vec<u8>) -> Outcome {
    let log = Log::default();
    let service_log = log.clone();
    let out = exchange(&wire, move |io| {
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let log = service_log.clone();
                async move {
                    record(log, req).await;
                    Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
        })
    })
    .await;
    let seen = std::mem::take(&mut *log.lock().unwrap());
    Outcome {
        seen,
        answers: answers(&out),
    }
}

#[derive(Clone)]
struct Case {
    wire: Vec<u8>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", Bytes::copy_from_slice(&self.wire))
    }
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "HEAD", "OPTIONS"]);
    let target = prop::sample::select(vec![
        "/",
        "/v1/completions?stream=true",
        "http://model.example/predict",
        "*",
        "/a%20b",
    ]);
    let version = weighted(vec![just(9, "HTTP/1.1"), just(1, "HTTP/1.0")]);
    let request_field = prop::sample::select(vec![
        "Expect: 100-continue",
        "Connection: close",
        "Connection: keep-alive",
        "Connection: upgrade",
        "Upgrade: websocket",
        "TE: trailers",
    ])
    .prop_map(str::to_owned);
    let field = weighted(vec![(3, plain_field().boxed()), (1, request_field.boxed())]);
    let fields = prop::collection::vec(field, 0..3);
    (method, target, version, fields, framed_body()).prop_map(
        |(method, target, version, fields, (framing, body))| {
            let mut wire = format!("{method} {target} {version}\r\nHost: model.example\r\n");
            for field in fields.iter().chain(&framing) {
                wire.push_str(field);
                wire.push_str("\r\n");
            }
            wire.push_str("\r\n");
            let mut wire = wire.into_bytes();
            wire.extend_from_slice(&body);
            wire
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    let mutations: BoxedStrategy<Vec<Mutation>> = weighted(vec![
        just(2, Vec::new()),
        (3, prop::collection::vec(mutation(), 1..3).boxed()),
    ]);
    let second = prop::option::weighted(0.3, request());
    (request(), second, mutations).prop_map(|(first, second, mutations)| {
        let mut wire = first;
        wire.extend(second.into_iter().flatten());
        for m in &mutations {
            apply(&mut wire, m);
        }
        Case { wire }
    })
}

#[derive(Default)]
struct Tally {
    agreed: AtomicUsize,
    served: AtomicUsize,
    refused: AtomicUsize,
    list: bool,
    disagreed: AtomicUsize,
}

fn check(case: &Case, rt: &tokio::runtime::Runtime, tally: &Tally) -> Result<(), TestCaseError> {
    let (ours, theirs) = rt.block_on(async {
        let ours = ours(case.wire.clone()).await;
        let theirs = hypers(case.wire.clone()).await;
        (ours, theirs)
    });
    if ours == theirs {
        tally.agreed.fetch_add(1, Ordering::Relaxed);
        if ours.answers.contains(&true) {
            tally.served.fetch_add(1, Ordering::Relaxed);
        }
        if ours.answers.contains(&false) || ours.seen.is_empty() {
            tally.refused.fetch_add(1, Ordering::Relaxed);
        }
        return Ok(());
    }
    let report =
        format!("different outcomes for {case:?}:\n  ours:  {ours:?}\n  hyper: {theirs:?}");
    if tally.list {
        eprintln!("{report}");
        tally.disagreed.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    Err(TestCaseError::fail(report))
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn the_server_and_hyper_agree_on_generated_requests() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(384);
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x4854_5450);
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    let rt = paused_runtime();
    let tally = Tally {
        list: std::env::var_os("DIFFERENTIAL_LIST").is_some(),
        ..Tally::default()
    };
    let result = TestRunner::new(config).run(&case(), |case| check(&case, &rt, &tally));
    let (agreed, served, refused) = (
        tally.agreed.load(Ordering::Relaxed),
        tally.served.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
    );
    eprintln!(
        "{cases} cases: {agreed} agreed, {served} with a request served, {refused} with a refusal"
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(
        tally.disagreed.load(Ordering::Relaxed),
        0,
        "disagreements listed above"
    );
    // The grammar must reach both verdicts, or agreement means little.
    assert!(served >= cases as usize / 5, "too few cases served");
    assert!(refused >= cases as usize / 5, "too few cases refused");
}
