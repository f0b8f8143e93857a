//! The proxy's own HTTP/1.1 server (src/proxy/http1.rs) against raw clients: a head it cannot
//! take gets the status that names the fault and a closed connection; `Expect: 100-continue`,
//! HEAD, HTTP/1.0 keep-alive and close-delimited bodies behave as RFC 9112 says; a sized
//! response's head waits for its body, a streamed one's does not; a request answered before
//! its body was read keeps its connection, or is told it will not, and a client still sending
//! is never reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::support::*;

/// An upstream that answers `<path> got <body>`, or on `/stream` two chunks without a length.
async fn echo() -> Upstream {
    upstream(|req| async move {
        let path = req.uri().path().to_owned();
        if path == "/stream" {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"one,")).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Bytes::from_static(b"two")).await;
            });
            return Response::new(body);
        }
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(format!(
            "{path} got {}",
            String::from_utf8_lossy(&body)
        )))
    })
    .await
}

/// Reads from `s` until `want` has arrived (or the connection closes, or 5 s pass).
async fn read_until(s: &mut TcpStream, want: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&out).contains(want) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a `content-length` (head and body), and nothing after it: the head
/// a byte at a time, so that a response right behind it stays in the socket for the next call.
async fn read_sized(s: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !raw.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match tokio::time::timeout_at(deadline, s.read(&mut byte)).await {
            Ok(Ok(1)) => raw.push(byte[0]),
            Ok(Ok(_)) | Err(_) => break,
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no response with a content-length: {head:?}"));
    let mut body = vec![0u8; length];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut body))
        .await
        .unwrap_or_else(|_| panic!("the body of {head:?} did not come"))
        .unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// An address where nothing listens: the proxy answers its own 502/503 without reading.
async fn nowhere() -> SocketAddr {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    closed.local_addr().unwrap()
}

/// `data` as one chunk and the last chunk.
fn chunked(data: &[u8]) -> Vec<u8> {
    [
        format!("{:x}\r\n", data.len()).as_bytes(),
        data,
        b"\r\n0\r\n\r\n",
    ]
    .concat()
}

/// Shuts the client's side and reads to the end: how the proxy's side ended (an error is a
/// reset) and what came before it.
async fn close_and_read_to_end(s: &mut TcpStream) -> (std::io::Result<usize>, Vec<u8>) {
    s.shutdown().await.unwrap();
    let mut after = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut after))
        .await
        .expect("the proxy did not close");
    (end, after)
}

#[tokio::test]
async fn heads_that_cannot_be_taken_get_the_status_naming_the_fault_and_a_close() {
    let up = echo().await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let many_headers: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    // 16 MB: far more than the proxy reads before it refuses the head (64 KiB) and than the
    // socket buffers hold, so the client's write completes only if the proxy reads the rest
    // before it closes (a close with bytes unread would reset the connection under it).
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(16_000_000)
    );
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "garbage",
            b"NOT HTTP AT ALL\r\n\r\n".to_vec(),
            "400",
            "malformed request head",
        ),
        (
            "HTTP/2.0 in an HTTP/1 head",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(),
            "505",
            "only HTTP/1.0 and HTTP/1.1",
        ),
        (
            "a head over 64 KiB",
            huge.into_bytes(),
            "431",
            "request head too large",
        ),
        (
            "120 header lines",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            "431",
            "too many request header lines",
        ),
        (
            "a Content-Length with a sign",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc".to_vec(),
            "400",
            "invalid Content-Length",
        ),
        (
            "a transfer coding that does not end in chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            "400",
            "does not end in chunked",
        ),
        (
            "two different lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"
                .to_vec(),
            "400",
            "Content-Length lines that disagree",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "400",
            "Transfer-Encoding in an HTTP/1.0 request",
        ),
    ];
    for (what, request, status, reason) in cases {
        // `raw_exchange` reads to the end: it returns only because the proxy closed.
        let out = raw_exchange(proxy.listen_addr, &request).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {out:.200}"
        );
        assert!(out.contains("connection: close"), "{what}: {out:.300}");
        assert!(out.contains(reason), "{what}: {out:.300}");
        assert!(out.contains("\r\ndate: "), "{what}: {out:.300}");
    }
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    proxy.shutdown().await;
}

/// RFC 9112 6.1: with both, Transfer-Encoding frames the body, the Content-Length goes, and the
/// connection closes after the answer (what hyper's server did, and a smuggling guard: the
/// bytes after the chunked body are never read as a request).
#[tokio::test]
async fn content_length_beside_transfer_encoding_is_ignored_and_the_connection_closed() {
    let up = echo().await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let out = raw_exchange(
        proxy.listen_addr,
        b"POST /both HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert!(out.ends_with("/both got hello"), "{out}");
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let up = echo().await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut s = TcpStream::connect(proxy.listen_addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The client waits for the go-ahead before it sends a byte of its body.
    let interim = read_until(&mut s, "\r\n\r\n").await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let out = read_until(&mut s, "got hello").await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("/upload got hello"), "{out}");
    proxy.shutdown().await;
}

/// RFC 9110 10.1.1: a server that answers before it read the whole request body says whether
/// it closes the connection or reads on. The proxy reads on and drops the rest, however long
/// (nginx does the same), so a client's next request on the connection works; it says
/// `Connection: close` only when the client still waits for a 100 Continue and may never send
/// the body.
#[tokio::test]
async fn a_request_answered_before_its_body_was_read_keeps_its_connection_or_is_told() {
    // A replica that answers without reading the body, and a port where nothing listens (the
    // proxy's own 502, also without reading it).
    let early = upstream(|_req| async { Response::new(full("early")) }).await;
    let nowhere = nowhere().await;
    // 4 MB of body after the answer: more than the socket buffers hold, so the proxy must
    // read it for the client to get it all out.
    let long = vec![b'x'; 4_000_000];
    let long_chunked = chunked(&long);
    for (name, addr) in [("replica", early.addr), ("refused", nowhere)] {
        let proxy = start(settings(spec(&[("v1", vec![addr], 100)])));
        // Half the body, then the answer, then the rest of it and a second request: sized,
        // then chunked (whose end is known only from its last chunk); short, then long.
        let mut status = String::new();
        let long_sized = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\nhello",
            5 + long.len()
        );
        let bodies: [(&str, &[u8], &[u8]); 4] = [
            (
                "sized",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello",
                b"world",
            ),
            (
                "chunked",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                b"5\r\nworld\r\n0\r\n\r\n",
            ),
            ("long sized", long_sized.as_bytes(), &long),
            (
                "long chunked",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                &long_chunked,
            ),
        ];
        for (body, head, rest) in bodies {
            let mut s = TcpStream::connect(proxy.listen_addr).await.unwrap();
            s.write_all(head).await.unwrap();
            let first = read_sized(&mut s).await;
            // The status class: a refused replica's 502 becomes a 503 once it is ejected.
            if status.is_empty() {
                status = first.get(..10).unwrap_or_default().to_owned();
            }
            assert!(
                status.starts_with("HTTP/1.1 ") && first.starts_with(&status),
                "{name} {body}: {first:?}"
            );
            assert!(
                !first.to_ascii_lowercase().contains("connection: close"),
                "{name} {body}: {first}"
            );
            s.write_all(&[rest, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"].concat())
                .await
                .unwrap();
            let second = read_sized(&mut s).await;
            assert!(
                second.starts_with(&status),
                "{name} {body}: the connection did not serve the next request: {second:?}"
            );
        }

        // A client waiting for 100 Continue before it sends its body. Sent to a replica, the
        // body was asked for (the 100 went out), so it comes and the connection stays; refused
        // at once, it was never asked for: told, and closed.
        let mut s = TcpStream::connect(proxy.listen_addr).await.unwrap();
        s.write_all(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        if name == "replica" {
            let out = read_until(&mut s, "\r\n\r\nearly").await;
            let answer = out.strip_prefix("HTTP/1.1 100 Continue\r\n\r\n");
            assert!(
                answer.is_some_and(|a| a.starts_with(&status)),
                "{name}: {out}"
            );
            assert!(!out.contains("connection: close"), "{name}: {out}");
            s.write_all(b"helloGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let next = read_sized(&mut s).await;
            assert!(next.starts_with(&status), "{name}: {next:?}");
        } else {
            let out = read_sized(&mut s).await;
            assert!(out.starts_with(&status), "{name}: {out}");
            assert!(out.contains("connection: close\r\n"), "{name}: {out}");
            // Clients that waited long enough send the body anyway (curl after a second):
            // the proxy reads it and then closes cleanly, without a reset.
            s.write_all(b"hello").await.unwrap();
            let (end, after) = close_and_read_to_end(&mut s).await;
            assert!(end.is_ok() && after.is_empty(), "{name}: {end:?} {after:?}");
        }
        proxy.shutdown().await;
    }
}

/// A client that writes its whole request before it reads (as Python's `http.client`, and so
/// `requests`, do) gets an early answer, not a broken pipe, however long the body: the proxy
/// reads the body to its end, then serves the next request, or, when the client asked for
/// `Connection: close`, closes without resetting the connection.
#[tokio::test]
async fn a_client_that_sends_its_whole_body_before_reading_gets_the_early_answer() {
    let nowhere = nowhere().await;
    let proxy = start(settings(spec(&[("v1", vec![nowhere], 100)])));
    let body = vec![b'x'; 8_000_000];
    let chunked = chunked(&body);
    let sized = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let sized_close = sized.replace("Host: x\r\n", "Host: x\r\nConnection: close\r\n");
    let cases: [(&str, &[u8], &[u8], bool); 3] = [
        ("sized", sized.as_bytes(), &body, false),
        (
            "chunked",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            &chunked,
            false,
        ),
        (
            "sized, Connection: close",
            sized_close.as_bytes(),
            &body,
            true,
        ),
    ];
    for (name, head, rest, close) in cases {
        let mut s = TcpStream::connect(proxy.listen_addr).await.unwrap();
        let next: &[u8] = if close {
            b""
        } else {
            b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        };
        tokio::time::timeout(
            Duration::from_secs(20),
            s.write_all(&[head, rest, next].concat()),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: the proxy stopped reading the body"))
        .unwrap_or_else(|e| panic!("{name}: the body could not be sent: {e}"));
        let first = read_sized(&mut s).await;
        assert!(
            first.starts_with("HTTP/1.1 5"),
            "{name}: no early answer: {first:?}"
        );
        if close {
            assert!(first.contains("connection: close\r\n"), "{name}: {first}");
            let (end, after) = close_and_read_to_end(&mut s).await;
            assert!(end.is_ok() && after.is_empty(), "{name}: {end:?} {after:?}");
        } else {
            let second = read_sized(&mut s).await;
            assert!(
                second.starts_with("HTTP/1.1 5"),
                "{name}: the connection did not serve the next request: {second:?}"
            );
        }
    }
    proxy.shutdown().await;
}

/// A replica that refuses a large body at once (a 413) and closes its socket without reading
/// it resets the proxy's upload; the client still gets the replica's answer, not a 502.
/// (nginx with `proxy_request_buffering off` answers 502 here.)
#[tokio::test]
async fn a_replica_that_refuses_a_large_body_and_closes_is_still_heard() {
    let replica = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = replica.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = replica.accept().await {
            tokio::spawn(async move {
                if !replica_reads_a_head(&mut c).await {
                    return;
                }
                let _ = c
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
                    .await;
                // Dropped with the body unread: the kernel resets the proxy's upload.
            });
        }
    });
    let proxy = start(settings(spec(&[("v1", vec![addr], 100)])));
    let body = vec![b'x'; 8_000_000];
    for round in 0..3 {
        let mut s = TcpStream::connect(proxy.listen_addr).await.unwrap();
        let head = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tokio::time::timeout(
            Duration::from_secs(20),
            s.write_all(&[head.as_bytes(), &body].concat()),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: the proxy stopped reading the body"))
        .unwrap_or_else(|e| panic!("round {round}: the body could not be sent: {e}"));
        let out = read_sized(&mut s).await;
        assert!(
            out.starts_with("HTTP/1.1 413 ") && out.ends_with("too large"),
            "round {round}: {out:?}"
        );
    }
    proxy.shutdown().await;
}

/// A chunked body that turns malformed midway fails the request, and the client is answered
/// and the connection closed cleanly even though it goes on sending (8 MB more): the proxy
/// reads what still comes before it closes.
#[tokio::test]
async fn a_malformed_chunk_is_answered_and_closed_without_a_reset() {
    // A replica that reads the whole body before it answers, so the fault is met while the
    // body streams to it.
    let up = upstream(|req| async move {
        let read = req.into_body().collect().await.is_ok();
        Response::new(full(if read { "got hello" } else { "cut" }))
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut s = TcpStream::connect(proxy.listen_addr).await.unwrap();
    let junk = vec![b'z'; 8_000_000];
    let request = [
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nnot a size\r\n"
            .as_slice(),
        &junk,
    ]
    .concat();
    tokio::time::timeout(Duration::from_secs(20), s.write_all(&request))
        .await
        .expect("the proxy stopped reading")
        .expect("the request could not be sent");
    let (end, out) = close_and_read_to_end(&mut s).await;
    let out = String::from_utf8_lossy(&out);
    assert!(end.is_ok(), "{end:?} after {out:?}");
    assert!(
        out.starts_with("HTTP/1.1 4") || out.starts_with("HTTP/1.1 5"),
        "{out:?}"
    );
    assert!(!out.contains("got hello"), "{out:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn head_answers_carry_no_body_and_the_connection_serves_the_next_request() {
    let up = echo().await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let out = raw_exchange(
        proxy.listen_addr,
        b"HEAD /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let heads: Vec<&str> = out.matches("HTTP/1.1 200 OK").collect();
    assert_eq!(heads.len(), 2, "{out}");
    // Had the HEAD answer carried its body, "/first got" would be in the stream.
    assert!(!out.contains("/first got"), "{out}");
    assert!(out.ends_with("/second got "), "{out}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn http10_clients_get_keep_alive_only_when_asked_and_unsized_bodies_until_close() {
    let up = echo().await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));

    // Asked for keep-alive: told so, and the connection takes a second request.
    let mut s = TcpStream::connect(proxy.listen_addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut s, "/a got ").await;
    assert!(first.starts_with("HTTP/1.0 200 OK\r\n"), "{first}");
    assert!(first.contains("connection: keep-alive\r\n"), "{first}");
    s.write_all(b"GET /b HTTP/1.0\r\n\r\n").await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    // Not asked the second time: answered, then closed (read_to_string returned).
    assert!(rest.ends_with("/b got "), "{rest}");

    // A body of unknown length cannot be chunked for HTTP/1.0: it ends with the connection.
    let out = raw_exchange(
        proxy.listen_addr,
        b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
    assert!(
        !out.to_ascii_lowercase().contains("transfer-encoding"),
        "{out}"
    );
    assert!(!out.contains("connection: keep-alive"), "{out}");
    assert!(out.ends_with("\r\n\r\none,two"), "{out}");
    proxy.shutdown().await;
}

/// A raw replica's first step: reads until a request head is in (and maybe some of its body).
/// False if the connection ended first.
async fn replica_reads_a_head(s: &mut TcpStream) -> bool {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// When a split replica sends the body that follows its head.
enum Then {
    /// After a pause.
    After(Duration),
    /// Once the test says so (after the client has seen the head).
    Released(Arc<Notify>),
}

/// A replica that writes its response head, then (see [`Then`]) its body: as servers do that
/// send headers and body in separate writes (uvicorn, nginx with sendfile).
async fn split_replica(head: &'static [u8], body: &'static [u8], then: Then) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let then = Arc::new(then);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let then = then.clone();
            tokio::spawn(async move {
                if !replica_reads_a_head(&mut s).await {
                    return;
                }
                let _ = s.write_all(head).await;
                match &*then {
                    Then::After(gap) => tokio::time::sleep(*gap).await,
                    Then::Released(go) => go.notified().await,
                }
                let _ = s.write_all(body).await;
                // Held open: the proxy may keep the connection.
                let _ = s.read(&mut [0u8; 1024]).await;
            });
        }
    });
    addr
}

/// What the client's first read returns, and the whole response once `want` arrived;
/// `after_first` is told once the first read returned.
async fn first_read_and_all(
    proxy: SocketAddr,
    want: &str,
    after_first: Option<&Notify>,
) -> (String, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: m\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("nothing from the proxy within 5 s")
        .unwrap();
    if let Some(go) = after_first {
        go.notify_one();
    }
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    if first.contains(want) {
        return (first.clone(), first);
    }
    let rest = read_until(&mut s, want).await;
    (first.clone(), first + &rest)
}

#[tokio::test]
async fn a_sized_head_waits_for_its_body_but_a_streamed_head_goes_out_at_once() {
    // Sized: the client gets head and body in one piece, not the head alone 300 ms early.
    let sized = split_replica(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n",
        b"{\"ok\":true}",
        Then::After(Duration::from_millis(300)),
    )
    .await;
    let proxy = start(settings(spec(&[("v1", vec![sized], 100)])));
    let (first, all) = first_read_and_all(proxy.listen_addr, "{\"ok\":true}", None).await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(
        first.ends_with("\r\n\r\n{\"ok\":true}"),
        "first read: {first:?}"
    );
    assert!(all.contains("content-length: 11\r\n"), "{all}");
    proxy.shutdown().await;

    // Streamed (server-sent events, chunked): the head is the client's as soon as it came,
    // before any event, so it can show the stream has started. The replica sends the event
    // only once the client has read, so the order cannot depend on timing.
    let go = Arc::new(Notify::new());
    let streamed = split_replica(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        b"e\r\ndata: token\n\n\r\n0\r\n\r\n",
        Then::Released(go.clone()),
    )
    .await;
    let proxy = start(settings(spec(&[("v1", vec![streamed], 100)])));
    let (first, all) = first_read_and_all(proxy.listen_addr, "\r\n0\r\n\r\n", Some(&go)).await;
    assert!(first.ends_with("\r\n\r\n"), "first read: {first:?}");
    assert!(!first.contains("data: token"), "first read: {first:?}");
    assert!(all.contains("data: token\n\n"), "{all}");
    proxy.shutdown().await;
}
