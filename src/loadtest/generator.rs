//! Sending requests and timing them: HTTP/1.1 keep-alive connections (one per client, or a
//! pool for open-loop arrivals) or one HTTP/2 connection, request bodies drawn from a seeded
//! generator, and every response read to its end with a monotonic clock: time to first token
//! (first SSE `data:` event, or first body byte), each gap between token events, end to end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::options::{Options, Shape, StreamChoice};

/// How a request ended without a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Timeout,
    Protocol,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Protocol => "protocol",
        }
    }
}

/// One request's measurements.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sent: Instant,
    pub status: Result<u16, Failure>,
    /// The version header's value, when the answer had one.
    pub deployment: Option<HeaderValue>,
    pub ttft: Option<Duration>,
    /// Gaps between token events (streams only), in microseconds.
    pub itl_us: Vec<u32>,
    pub e2el: Duration,
    pub tokens: u32,
    pub bytes: u64,
    /// A 2xx stream that ended without `[DONE]` or broke off.
    pub broken: bool,
    /// The answer was a stream of events (TPOT and ITL apply).
    pub streamed: bool,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        matches!(self.status, Ok(s) if (200..300).contains(&s)) && !self.broken
    }
}

/// One request to send.
pub struct Planned {
    pub body: Option<Bytes>,
}

const WORDS: &[&str] = &[
    "the", "rollout", "moves", "traffic", "between", "two", "versions", "of", "a", "model",
    "while", "replicas", "scale", "up", "and", "down", "under", "real", "load",
];

/// Draws request bodies: lengths, stream or not.
pub struct Planner {
    rng: SmallRng,
    shape: Shape,
}

impl Planner {
    pub fn new(shape: &Shape, seed: u64) -> Planner {
        Planner {
            rng: SmallRng::seed_from_u64(seed),
            shape: shape.clone(),
        }
    }

    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    pub fn next(&mut self) -> Planned {
        match &self.shape {
            Shape::Get => Planned { body: None },
            Shape::Json(b) => Planned {
                body: Some(b.clone()),
            },
            Shape::Chat {
                stream,
                max_tokens,
                prompt_words,
            } => {
                let stream = match stream {
                    StreamChoice::Always => true,
                    StreamChoice::Never => false,
                    StreamChoice::Mix => self.rng.random_bool(0.5),
                };
                let tokens = self.rng.random_range(max_tokens.0..=max_tokens.1);
                let words = self.rng.random_range(prompt_words.0..=prompt_words.1);
                let mut prompt = String::with_capacity(words as usize * 8);
                for i in 0..words {
                    if i > 0 {
                        prompt.push(' ');
                    }
                    prompt.push_str(WORDS[self.rng.random_range(0..WORDS.len())]);
                }
                let body = serde_json::json!({
                    "model": "switchyard-loadtest",
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": tokens,
                    "stream": stream,
                });
                Planned {
                    body: Some(Bytes::from(body.to_string())),
                }
            }
        }
    }
}

type Body = Full<Bytes>;

/// A connection to the target.
#[derive(Clone)]
pub enum Conn {
    H1(Arc<tokio::sync::Mutex<http1::SendRequest<Body>>>),
    H2(http2::SendRequest<Body>),
}

pub async fn connect(opts: &Options) -> Result<Conn, String> {
    let stream = tokio::net::TcpStream::connect(opts.authority.as_str())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", opts.authority))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    if opts.http2 {
        let (send, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("HTTP/2 handshake with {} failed: {e}", opts.authority))?;
        tokio::spawn(conn);
        Ok(Conn::H2(send))
    } else {
        let (send, conn) = http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake with {} failed: {e}", opts.authority))?;
        tokio::spawn(conn);
        Ok(Conn::H1(Arc::new(tokio::sync::Mutex::new(send))))
    }
}

/// HTTP/1.1 connections not in use, for open-loop arrivals; HTTP/2 shares one.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<http1::SendRequest<Body>>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
}

impl Pool {
    /// A ready connection: an idle one, or a new one.
    pub async fn get(&self, opts: &Options) -> Result<Conn, Failure> {
        if opts.http2 {
            let mut h2 = self.h2.lock().await;
            if let Some(s) = h2.as_ref().filter(|s| !s.is_closed()) {
                return Ok(Conn::H2(s.clone()));
            }
            let c = connect(opts).await.map_err(|_| Failure::Connect)?;
            if let Conn::H2(s) = &c {
                *h2 = Some(s.clone());
            }
            return Ok(c);
        }
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match idle {
                Some(s) if s.is_ready() => {
                    return Ok(Conn::H1(Arc::new(tokio::sync::Mutex::new(s))))
                }
                Some(_) => continue,
                None => return connect(opts).await.map_err(|_| Failure::Connect),
            }
        }
    }

    /// Gives back a connection whose last response was read to its end.
    pub fn put(&self, conn: Conn) {
        if let Conn::H1(s) = conn {
            if let Ok(m) = Arc::try_unwrap(s) {
                let s = m.into_inner();
                if s.is_ready() {
                    self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                }
            }
        }
    }
}

/// What the SSE parser saw in a body.
#[derive(Default)]
struct SseState {
    buf: BytesMut,
    tokens: u32,
    done: bool,
}

impl SseState {
    /// Feeds a chunk; returns the token events it completed.
    fn feed(&mut self, chunk: &[u8]) -> u32 {
        self.buf.extend_from_slice(chunk);
        let mut events = 0;
        while let Some(end) = find_event_end(&self.buf) {
            let event = self.buf.split_to(end.0 + end.1);
            for line in event[..end.0].split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let Some(data) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let data = data.trim_ascii();
                if data == b"[DONE]" {
                    self.done = true;
                } else if !data.is_empty() {
                    self.tokens += 1;
                    events += 1;
                }
            }
        }
        events
    }
}

/// The end of the first complete event: (its length, the length of the blank-line separator).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Sends one request on `conn` and reads the answer to its end, within `opts.timeout`.
pub async fn exchange(opts: &Options, conn: &Conn, planned: Planned) -> Outcome {
    let sent = Instant::now();
    let deadline = sent + opts.timeout;
    let mut out = Outcome {
        sent,
        status: Err(Failure::Protocol),
        deployment: None,
        ttft: None,
        itl_us: Vec::new(),
        e2el: Duration::ZERO,
        tokens: 0,
        bytes: 0,
        broken: false,
        streamed: false,
    };
    let method = if planned.body.is_some() {
        Method::POST
    } else {
        Method::GET
    };
    let mut req = Request::builder().method(method);
    req = match conn {
        // HTTP/2 carries the authority in the request; HTTP/1.1 in Host.
        Conn::H2(_) => req.uri(opts.absolute_uri.clone()),
        Conn::H1(_) => req
            .uri(opts.origin_uri.clone())
            .header(header::HOST, opts.host_header.clone()),
    };
    if planned.body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let Ok(req) = req.body(Full::new(planned.body.unwrap_or_default())) else {
        return out;
    };
    let response = match conn {
        Conn::H1(s) => {
            let mut s = s.lock().await;
            if tokio::time::timeout_at(deadline, s.ready()).await.is_err() {
                out.status = Err(Failure::Timeout);
                out.e2el = sent.elapsed();
                return out;
            }
            tokio::time::timeout_at(deadline, s.send_request(req)).await
        }
        Conn::H2(s) => {
            let mut s = s.clone();
            tokio::time::timeout_at(deadline, s.send_request(req)).await
        }
    };
    let resp = match response {
        Err(_) => {
            out.status = Err(Failure::Timeout);
            out.e2el = sent.elapsed();
            return out;
        }
        Ok(Err(_)) => {
            out.e2el = sent.elapsed();
            return out;
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    out.status = Ok(status);
    out.deployment = resp.headers().get(&opts.version_header).cloned();
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let ok = (200..300).contains(&status);
    out.streamed = sse;
    // Whole answers of a chat are kept to read `usage.completion_tokens`.
    let keep = ok && !sse && matches!(opts.shape, Shape::Chat { .. });
    let mut kept = BytesMut::new();
    let mut sse_state = SseState::default();
    let mut last_token: Option<Instant> = None;
    let mut body = resp.into_body();
    let ended_cleanly = loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                out.status = Err(Failure::Timeout);
                break false;
            }
            Ok(None) => break true,
            Ok(Some(Err(_))) => break false,
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let now = Instant::now();
        out.bytes += data.len() as u64;
        if sse {
            let events = sse_state.feed(&data);
            for _ in 0..events {
                match last_token {
                    None => out.ttft = Some(now - sent),
                    Some(t) => out
                        .itl_us
                        .push(u32::try_from((now - t).as_micros()).unwrap_or(u32::MAX)),
                }
                last_token = Some(now);
            }
        } else {
            if out.ttft.is_none() {
                out.ttft = Some(now - sent);
            }
            if keep && kept.len() < 1 << 20 {
                kept.extend_from_slice(&data);
            }
        }
    };
    out.e2el = sent.elapsed();
    if sse {
        out.tokens = sse_state.tokens;
        if ok && (!ended_cleanly || !sse_state.done) && out.status.is_ok() {
            out.broken = true;
        }
    } else if !ended_cleanly && out.status.is_ok() {
        out.status = Err(Failure::Protocol);
    } else if keep {
        out.tokens = completion_tokens(&kept).unwrap_or(0);
    }
    if out.ttft.is_none() && ended_cleanly {
        // No body at all: the answer's end is its first byte.
        out.ttft = Some(out.e2el);
    }
    out
}

fn completion_tokens(body: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Usage {
        completion_tokens: u32,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Usage,
    }
    serde_json::from_slice::<Answer>(body)
        .ok()
        .map(|a| a.usage.completion_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_counted_across_chunk_boundaries() {
        let mut s = SseState::default();
        assert_eq!(s.feed(b"data: {\"a\":1}\n\ndata: {\"a\""), 1);
        assert_eq!(s.feed(b":2}\n\n: comment\n\ndata: [DONE]\r\n\r\n"), 1);
        assert_eq!(s.tokens, 2);
        assert!(s.done);
    }

    #[test]
    fn usage_tokens_come_from_whole_answers() {
        assert_eq!(
            completion_tokens(br#"{"choices":[],"usage":{"completion_tokens":12}}"#),
            Some(12)
        );
        assert_eq!(completion_tokens(b"not json"), None);
    }

    #[test]
    fn the_same_seed_plans_the_same_requests() {
        let shape = Shape::Chat {
            stream: StreamChoice::Mix,
            max_tokens: (16, 256),
            prompt_words: (1, 10),
        };
        let plan = |seed| {
            let mut p = Planner::new(&shape, seed);
            (0..20).map(|_| p.next().body.unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(plan(7), plan(7));
        assert_ne!(plan(7), plan(8));
        let mut p = Planner::new(&shape, 1);
        let streams = (0..1000)
            .filter(|_| {
                let b = p.next().body.unwrap();
                String::from_utf8_lossy(&b).contains("\"stream\":true")
            })
            .count();
        assert!((400..600).contains(&streams), "{streams}");
    }
}
