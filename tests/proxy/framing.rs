//! HTTP/1.1 from replicas as it arrives on the wire, including what a hyper server never sends:
//! trailers, close-delimited bodies, interim 1xx heads, bytes one at a time, garbage, bodies
//! cut short. And the keep-alive contract: a connection is reused only after a clean response.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// What the raw replica does with one request.
struct Reply {
    bytes: Vec<u8>,
    /// Write one byte at a time, with a pause between.
    trickle: bool,
    /// Close the connection after the reply.
    close: bool,
}

fn reply(bytes: &[u8]) -> Reply {
    Reply {
        bytes: bytes.to_vec(),
        trickle: false,
        close: false,
    }
}

/// A replica written against the socket: reads each request head (and a Content-Length body),
/// answers with whatever `script` returns for the n-th request (from 0) over all connections.
/// Returns its address and the number of connections it accepted.
async fn raw_replica(
    script: impl Fn(usize, &str) -> Reply + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let conns = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            let (script, requests) = (script.clone(), requests.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let body_len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < end + body_len {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + body_len);
                    let n = requests.fetch_add(1, Ordering::SeqCst);
                    let r = script(n, &head);
                    if r.trickle {
                        for b in &r.bytes {
                            if s.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    } else if s.write_all(&r.bytes).await.is_err() {
                        return;
                    }
                    if r.close {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn keep_alive_connections_to_a_replica_are_reused() {
    let (addr, conns) =
        raw_replica(|_, _| reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    // One worker, so one pool: every request after the first finds the connection idle.
    let mut s = settings(spec(&[("v1", vec![addr], 100)]));
    s.workers = 1;
    let proxy = start(s);
    for _ in 0..5 {
        let got = get(proxy.listen_addr, "/").await;
        assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "ok"));
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "connections for 5 requests"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn chunked_bodies_and_their_trailers_reach_the_client() {
    let (addr, _) = raw_replica(|_, _| {
        reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n\
              5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\ngrpc-status: 0\r\n\r\n",
        )
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![addr], 100)])));
    // HTTP/2 always carries trailers; HTTP/1.1 clients would have to ask with `TE: trailers`.
    let mut c = h2c(proxy.listen_addr).await;
    let resp = c
        .send_request(Request::get("http://m.local/").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers forwarded");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"hello, world");

    // An HTTP/1.1 client gets them when it says it accepts trailers.
    let req = Request::get("/")
        .header("host", "m.local")
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let resp = h1(proxy.listen_addr).await.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["trailer"], "grpc-status");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers over HTTP/1.1");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"hello, world");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_delimited_by_close_is_forwarded_and_its_connection_not_reused() {
    let (addr, conns) = raw_replica(|_, _| Reply {
        bytes: b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end".to_vec(),
        trickle: false,
        close: true,
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![addr], 100)])));
    for _ in 0..2 {
        let got = get(proxy.listen_addr, "/").await;
        assert_eq!(
            (got.status.as_u16(), got.text().as_str()),
            (200, "until the end")
        );
    }
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn interim_heads_are_skipped_and_a_head_may_arrive_a_byte_at_a_time() {
    let (addr, _) = raw_replica(|_, _| Reply {
        bytes: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\ncontent-length: 4\r\n\r\ndone"
            .to_vec(),
        trickle: true,
        close: false,
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![addr], 100)])));
    let req = Request::post("/v1/jobs")
        .header("host", "m.local")
        .body(full("{\"prompt\":\"hi\"}"))
        .unwrap();
    let got = send(proxy.listen_addr, req).await;
    assert_eq!(got.status, 201);
    assert_eq!(got.headers["x-a"], "1");
    assert_eq!(got.text(), "done");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_replica_that_does_not_speak_http_gets_a_502_naming_it() {
    let (addr, _) = raw_replica(|_, _| Reply {
        bytes: b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
        trickle: false,
        close: true,
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![addr], 100)])));
    let got = get(proxy.listen_addr, "/").await;
    assert_eq!(got.status, 502);
    let text = got.text();
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.contains("malformed response head"), "{text}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_cut_short_fails_the_client_and_the_connection_is_not_reused() {
    let (addr, conns) = raw_replica(|n, _| {
        if n == 0 {
            // Promises 10 bytes, sends 3, then stays open: the proxy must not reuse it.
            reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        } else {
            reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        }
    })
    .await;
    let mut s = settings(spec(&[("v1", vec![addr], 100)]));
    s.upstream.body_idle_timeout = Some(Duration::from_millis(300));
    s.workers = 1;
    let proxy = start(s);
    let mut c = h1(proxy.listen_addr).await;
    let resp = c
        .send_request(
            Request::get("/")
                .header("host", "m.local")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cut = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("the cut body ends within the idle timeout");
    assert!(
        cut.is_err(),
        "a body shorter than its Content-Length is an error"
    );

    let got = get(proxy.listen_addr, "/").await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "ok"));
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "the cut connection was reused"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_protocol_switch_nobody_asked_for_is_a_502() {
    let (addr, _) = raw_replica(|_, _| {
        reply(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n")
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![addr], 100)])));
    let got = get(proxy.listen_addr, "/").await;
    assert_eq!(got.status, 502);
    assert!(
        got.text()
            .contains("switched protocols without being asked"),
        "{}",
        got.text()
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_pooled_connection_the_replica_closed_while_idle_is_not_used() {
    // Keep-alive as far as the head says, then the replica closes the idle connection (as
    // uvicorn does after its 5 s keep-alive timeout).
    let (addr, conns) = raw_replica(|_, _| Reply {
        bytes: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        trickle: false,
        close: true,
    })
    .await;
    let mut s = settings(spec(&[("v1", vec![addr], 100)]));
    s.workers = 1;
    let proxy = start(s);
    for _ in 0..3 {
        let got = get(proxy.listen_addr, "/").await;
        assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "ok"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3);
    proxy.shutdown().await;
}

#[tokio::test]
async fn framing_hyper_would_refuse_is_not_passed_on() {
    // A Content-Length that `str::trim` would have read as 5 (U+00A0 after the digit): a 502.
    let (addr, _) =
        raw_replica(|_, _| reply(b"HTTP/1.1 200 OK\r\ncontent-length: 5\xc2\xa0\r\n\r\nhello"))
            .await;
    let proxy = start(settings(spec(&[("v1", vec![addr], 100)])));
    let got = get(proxy.listen_addr, "/").await;
    assert_eq!(got.status, 502);
    let text = got.text();
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.contains("invalid Content-Length"), "{text}");
    proxy.shutdown().await;

    // A chunk-size line ending in a bare LF: the body is cut, and the connection not reused.
    let (addr, conns) = raw_replica(|n, _| {
        if n == 0 {
            reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n")
        } else {
            reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        }
    })
    .await;
    let mut s = settings(spec(&[("v1", vec![addr], 100)]));
    s.workers = 1;
    let proxy = start(s);
    let mut c = h1(proxy.listen_addr).await;
    let request = Request::get("/")
        .header("host", "m.local")
        .body(empty())
        .unwrap();
    // The error may come before hyper flushed the head (the whole reply arrived in one read):
    // either way the client sees a broken response, never a body framed differently.
    if let Ok(resp) = c.send_request(request).await {
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .expect("the broken body ends at once");
        assert!(body.is_err(), "a bare LF in chunk framing breaks the body");
    }
    let got = get(proxy.listen_addr, "/").await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "ok"));
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "the broken connection was reused"
    );
    proxy.shutdown().await;
}
