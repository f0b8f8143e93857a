//! Neither listener holds resources for clients that say nothing: idle and trickling
//! connections are closed after the header timeout, and `/livez` answers throughout.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn idle_and_trickling_admin_clients_are_cut_and_livez_answers_throughout() {
    let up = named("v1").await;
    let mut s = settings(spec(&[("v1", vec![up.addr], 1)]));
    s.admin_header_timeout = Duration::from_secs(1);
    let proxy = start(s);
    let a = proxy.admin_addr;

    // 1,000 silent connections, one that trickles a request head, one idle after a request.
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(TcpStream::connect(a).await.unwrap());
    }
    let mut trickle = TcpStream::connect(a).await.unwrap();
    trickle.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
    let mut keep_alive = TcpStream::connect(a).await.unwrap();
    keep_alive
        .write_all(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // An event stream is a response, not an idle connection: it stays open past the timeout.
    let mut events = TcpStream::connect(a).await.unwrap();
    events
        .write_all(format!("GET /v1/models/m/environments/production/events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nAuthorization: Api-Key {}\r\n\r\n", proxy.api_key).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = events.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let n = keep_alive.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // Meanwhile the listener still answers.
    assert_eq!(admin(a, "/livez").await.0, 200);

    // Each is closed by the server within the timeout (plus slack for a busy machine).
    let started = Instant::now();
    for (i, mut c) in silent.into_iter().chain([trickle, keep_alive]).enumerate() {
        // A 408 or similar before the close is fine.
        let closed = closed_within(&mut c, Duration::from_secs(10)).await;
        assert!(closed, "connection {i} still open after 10 s");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let still_open = tokio::time::timeout(Duration::from_millis(500), events.read(&mut buf)).await;
    assert!(
        matches!(still_open, Err(_) | Ok(Ok(1..))),
        "the event stream was closed: {still_open:?}"
    );
    assert_eq!(admin(a, "/livez").await.0, 200);
    proxy.shutdown().await;
}

/// The proxy listener does the same for clients that open connections and say nothing.
#[tokio::test]
async fn idle_proxy_clients_are_cut_after_the_header_timeout() {
    let up = named("v1").await;
    let mut s = settings(spec(&[("v1", vec![up.addr], 1)]));
    s.client_header_timeout = Duration::from_secs(1);
    let proxy = start(s);
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(TcpStream::connect(proxy.listen_addr).await.unwrap());
    }
    let mut keep_alive = TcpStream::connect(proxy.listen_addr).await.unwrap();
    keep_alive
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = keep_alive.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(get(proxy.listen_addr, "/").await.status, 200);
    let started = Instant::now();
    for (i, mut c) in silent.into_iter().chain([keep_alive]).enumerate() {
        let closed = closed_within(&mut c, Duration::from_secs(10)).await;
        assert!(closed, "proxy connection {i} still open after 10 s");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    proxy.shutdown().await;
}

/// Reads until the server closes the connection, at most `within`; whether it did.
async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// A head sent a byte at a time keeps bytes coming but never completes: the header timeout
/// counts from the start of the head, not from the last byte.
#[tokio::test]
async fn a_request_head_trickling_in_is_cut_after_the_header_timeout() {
    let up = named("v1").await;
    let mut s = settings(spec(&[("v1", vec![up.addr], 1)]));
    s.client_header_timeout = Duration::from_secs(1);
    let proxy = start(s);
    let mut c = TcpStream::connect(proxy.listen_addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let started = Instant::now();
    let mut cut = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.write_all(b"x").await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), c.read(&mut probe)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "a head trickling for 5 s was not cut");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(800),
        "cut after only {after:?}"
    );
    assert!(after < Duration::from_secs(4), "cut after {after:?}");
    proxy.shutdown().await;
}

/// The header timeout is for heads and idle connections, not for answers: a replica that
/// takes longer than it to respond still gets its response through, and the connection then
/// closes once it has been idle for the timeout.
#[tokio::test]
async fn a_response_slower_than_the_header_timeout_still_arrives() {
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        http::Response::new(full("late but whole"))
    })
    .await;
    let mut s = settings(spec(&[("v1", vec![up.addr], 1)]));
    s.client_header_timeout = Duration::from_secs(1);
    let proxy = start(s);
    let mut c = TcpStream::connect(proxy.listen_addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"late but whole") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("no response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let idle_from = Instant::now();
    assert!(closed_within(&mut c, Duration::from_secs(10)).await);
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(800),
        "closed after only {idle:?} idle"
    );
    proxy.shutdown().await;
}
