//! Graceful shutdown: stop accepting, fail readiness, let in-flight streams finish.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;

use crate::support::*;

async fn stream_upstream(events: usize, gap: Duration) -> Upstream {
    upstream(move |_req| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for i in 0..events {
                if tx
                    .send(Bytes::from(format!("data: {i}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(gap).await;
            }
        });
        Response::new(body)
    })
    .await
}

#[tokio::test]
async fn an_in_flight_stream_finishes_while_new_connections_are_refused() {
    let up = stream_upstream(10, Duration::from_millis(100)).await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let (listen, admin_addr) = (proxy.listen_addr, proxy.admin_addr);
    let mut c = h1(listen).await;
    let resp = c
        .send_request(http::Request::get("/").body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut received = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .len();

    proxy.begin_shutdown();
    assert_eq!(admin(admin_addr, "/readyz").await.0, 503);
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(listen).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener still accepts after shutdown began");

    let waiter = tokio::task::spawn_blocking(move || proxy.wait());
    while let Some(frame) = body.frame().await {
        received += frame
            .expect("the stream was cut during graceful shutdown")
            .into_data()
            .unwrap()
            .len();
    }
    let expected: usize = (0..10).map(|i| format!("data: {i}\n\n").len()).sum();
    assert_eq!(received, expected);
    tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("the proxy did not stop after its last stream ended")
        .unwrap();
}

#[tokio::test]
async fn streams_longer_than_the_grace_period_are_cut_when_it_ends() {
    let up = stream_upstream(1000, Duration::from_millis(50)).await;
    let mut s = settings(spec(&[("v1", vec![up.addr], 100)]));
    s.shutdown_grace = Duration::from_millis(300);
    let proxy = start(s);
    let mut c = h1(proxy.listen_addr).await;
    let resp = c
        .send_request(http::Request::get("/").body(empty()).unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    proxy.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let result = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect()).await;
    assert!(
        matches!(result, Ok(Err(_))),
        "the stream should have been cut"
    );
}

#[tokio::test]
async fn idle_connections_do_not_hold_up_shutdown() {
    let up = named("v1").await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    // One connection that never sent a byte, one idle after a finished request.
    let silent = tokio::net::TcpStream::connect(proxy.listen_addr)
        .await
        .unwrap();
    let mut kept = h1(proxy.listen_addr).await;
    let resp = kept
        .send_request(
            http::Request::get("/")
                .header("host", "m")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(collect(resp).await.text(), "v1");
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The grace period is 10 s; neither connection has work to finish.
    let started = Instant::now();
    proxy.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} on idle connections",
        started.elapsed()
    );
    drop(silent);
}
