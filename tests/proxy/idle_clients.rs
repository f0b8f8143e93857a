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
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // a 408 or similar before the close is fine
                }
            }
        })
        .await;
        assert!(read.is_ok(), "connection {i} still open after 10 s");
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
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(read.is_ok(), "proxy connection {i} still open after 10 s");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    proxy.shutdown().await;
}
