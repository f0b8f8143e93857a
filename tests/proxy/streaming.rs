//! Streams pass through as they are produced, and a client that leaves cancels the upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Notify};

use crate::support::*;

/// An SSE upstream: 10 events, 100 ms apart.
async fn sse_upstream() -> Upstream {
    upstream(|_req| async {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for i in 0..10 {
                if tx
                    .send(Bytes::from(format!("data: {i}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn sse_events_arrive_as_the_upstream_sends_them() {
    let up = sse_upstream().await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut c = h1(proxy.listen_addr).await;
    let resp = c
        .send_request(http::Request::get("/stream").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Ok(data) = frame.into_data() {
            // One event may be split across frames; time each complete event.
            text.push_str(std::str::from_utf8(&data).unwrap());
            while let Some(end) = text.find("\n\n") {
                text.drain(..end + 2);
                arrivals.push(Instant::now());
            }
        }
    }
    assert_eq!(arrivals.len(), 10);
    let gaps: Vec<u128> = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    // Buffering would bunch events together (gaps near 0) or hold them to the end.
    for g in &gaps {
        assert!((50..=250).contains(g), "gaps between events (ms): {gaps:?}");
    }
    proxy.shutdown().await;
}

/// An upstream whose response never ends; `gone` fires when switchyard closes the connection.
async fn endless_upstream(delay_headers: Duration) -> (Upstream, Arc<Notify>) {
    let gone = Arc::new(Notify::new());
    let g = gone.clone();
    let up = upstream(move |_req| {
        let gone = g.clone();
        async move {
            // Fires when hyper drops the handler future: the connection went away.
            struct OnDrop(Arc<Notify>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.notify_one();
                }
            }
            let guard = OnDrop(gone.clone());
            tokio::time::sleep(delay_headers).await;
            std::mem::forget(guard);
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                loop {
                    if tx
                        .send(Bytes::from_static(b"data: token\n\n"))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                gone.notify_one();
            });
            Response::new(body)
        }
    })
    .await;
    (up, gone)
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_cancels_the_upstream_request() {
    let (up, gone) = endless_upstream(Duration::ZERO).await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut c = h1(proxy.listen_addr).await;
    let resp = c
        .send_request(http::Request::get("/generate").body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    let left = Instant::now();
    drop(body);
    drop(c);
    tokio::time::timeout(Duration::from_secs(2), gone.notified())
        .await
        .expect("upstream stream still running 2 s after the client left");
    assert!(
        left.elapsed() < Duration::from_secs(1),
        "took {:?}",
        left.elapsed()
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_before_headers_cancels_the_upstream_request() {
    let (up, gone) = endless_upstream(Duration::from_secs(30)).await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut c = h1(proxy.listen_addr).await;
    let pending = tokio::spawn(async move {
        let _ = c
            .send_request(http::Request::get("/slow").body(empty()).unwrap())
            .await;
    });
    assert!(
        eventually(Duration::from_secs(2), || up
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );
    pending.abort();
    tokio::time::timeout(Duration::from_secs(2), gone.notified())
        .await
        .expect("upstream handler still running 2 s after the client left");
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_bodies_stream_to_the_upstream_before_they_end() {
    // The upstream answers as soon as it sees the first request chunk; the client only sends
    // the rest after it got the response headers. A buffering proxy would deadlock here.
    let up = upstream(|req| async move {
        let mut body = req.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let (tx, out) = channel_body();
        tokio::spawn(async move {
            tx.send(first).await.unwrap();
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(d) = f.into_data() {
                    let _ = tx.send(d).await;
                }
            }
        });
        Response::new(out)
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut c = h1(proxy.listen_addr).await;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let req = http::Request::post("/echo")
        .body(ChanBody(rx).boxed())
        .unwrap();
    tx.send(Bytes::from_static(b"hello ")).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(3), c.send_request(req))
        .await
        .expect("response headers did not arrive while the request body was open")
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"hello ");
    tx.send(Bytes::from_static(b"world")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"world");
    proxy.shutdown().await;
}

/// One request through a proxy with body idle timeout `idle`, to a replica that sends
/// `events` SSE events `every` apart, then ends the stream or, with `then_silent`, keeps it
/// open without a byte for 30 s.
async fn paced_stream(
    events: usize,
    every: Duration,
    then_silent: bool,
    idle: Duration,
) -> (
    switchyard::server::RunningProxy,
    Response<hyper::body::Incoming>,
) {
    let up = upstream(move |_req| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for i in 0..events {
                tokio::time::sleep(every).await;
                if tx.send(Bytes::from(sse_event(i))).await.is_err() {
                    return;
                }
            }
            if then_silent {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            drop(tx);
        });
        Response::new(body)
    })
    .await;
    let mut s = settings(spec(&[("v1", vec![up.addr], 100)]));
    s.upstream.body_idle_timeout = Some(idle);
    let proxy = start(s);
    let mut c = h1(proxy.listen_addr).await;
    let resp = c
        .send_request(http::Request::get("/").body(empty()).unwrap())
        .await
        .unwrap();
    (proxy, resp)
}

fn sse_event(i: usize) -> String {
    format!("data: {i}\n\n")
}

/// Streams the proxy cut for silence, from its metrics.
async fn body_idle_timeouts(proxy: &switchyard::server::RunningProxy) -> f64 {
    let (_, metrics) = admin(proxy.admin_addr, "/metrics").await;
    sample(&metrics, "switchyard_upstream_errors_total{deployment=\"v1\",environment=\"production\",kind=\"body_idle_timeout\",model=\"m\"}")
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_stream_silent_for_longer_than_the_idle_timeout_is_cut() {
    let (proxy, resp) = paced_stream(1, Duration::ZERO, true, Duration::from_millis(300)).await;
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
    let result = result.expect("stream was not cut by the idle timeout");
    assert!(
        result.is_err(),
        "the client must see the stream fail, not end cleanly"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(body_idle_timeouts(&proxy).await, 1.0);
    proxy.shutdown().await;
}

/// The idle timer measures silence, not the stream's length: a stream that keeps sending
/// outlives many idle timeouts (the timer is re-armed from the last frame, not per frame).
#[tokio::test]
async fn a_stream_that_keeps_sending_outlives_the_idle_timeout() {
    let every = Duration::from_millis(100);
    let (proxy, resp) = paced_stream(12, every, false, Duration::from_millis(350)).await;
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the stream did not end")
        .expect("a stream that never went silent for the idle timeout was cut")
        .to_bytes();
    let expected: String = (0..12).map(sse_event).collect();
    assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
    assert_eq!(body_idle_timeouts(&proxy).await, 0.0);
    proxy.shutdown().await;
}

/// The timer re-armed by frames still cuts the stream once the frames stop.
#[tokio::test]
async fn a_stream_that_goes_silent_after_sending_is_cut() {
    let every = Duration::from_millis(100);
    let (proxy, resp) = paced_stream(5, every, true, Duration::from_millis(350)).await;
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let mut last_event = Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    got.extend_from_slice(&frame.into_data().unwrap_or_default());
                    last_event = Instant::now();
                }
                Some(Err(_)) => return true,
                None => return false,
            }
        }
    })
    .await
    .expect("a stream silent after its fifth event was not cut by the idle timeout");
    assert!(cut, "the client must see the stream fail, not end cleanly");
    // 350 ms of silence, then the cut: not the next time something else wakes the connection.
    let silent = last_event.elapsed();
    assert!(
        silent < Duration::from_millis(1500),
        "cut only after {silent:?} of silence"
    );
    let expected: String = (0..5).map(sse_event).collect();
    assert_eq!(std::str::from_utf8(&got).unwrap(), expected);
    assert_eq!(body_idle_timeouts(&proxy).await, 1.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_body_that_breaks_mid_stream_closes_the_replica_connection() {
    // The replica answers at once and streams while the request body is still coming.
    let body_ended = Arc::new(Notify::new());
    let ended = body_ended.clone();
    let up = upstream(move |req| {
        let ended = ended.clone();
        async move {
            let (tx, out) = channel_body();
            tokio::spawn(async move {
                let mut body = req.into_body();
                // Ends (with an error) when the proxy closes the connection.
                while let Some(Ok(_)) = body.frame().await {}
                ended.notify_one();
                drop(tx);
            });
            Response::new(out)
        }
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut s = tokio::net::TcpStream::connect(proxy.listen_addr)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"POST /gen HTTP/1.1\r\nhost: m\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 100]).await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // 900 bytes short, the client stops sending: its body can never complete.
    s.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), body_ended.notified())
        .await
        .expect("the replica's connection stayed open after the client's body broke");
    proxy.shutdown().await;
}

/// A client that stops sending its request body partway holds nothing for long: the request is
/// cut with 408 after the request-body idle timeout, the replica's connection is closed, the
/// slot is free again, and the metrics say why.
#[tokio::test]
async fn a_stalled_request_body_is_cut_and_frees_its_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The replica reads the whole body before answering, and says when its connection ends.
    let (closed_tx, mut closed_rx) = mpsc::channel::<()>(1);
    let up = upstream(move |req| {
        let closed = closed_tx.clone();
        async move {
            let got = req.into_body().collect().await;
            if got.is_err() {
                let _ = closed.send(()).await;
            }
            Response::new(full("read it all"))
        }
    })
    .await;
    let mut s = settings(spec(&[("v1", vec![up.addr], 100)]));
    s.upstream.request_body_idle_timeout = Some(Duration::from_secs(1));
    let proxy = start(s);

    let mut client = tokio::net::TcpStream::connect(proxy.listen_addr)
        .await
        .unwrap();
    client
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer 10 s after the body stalled");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The replica's connection was closed, not left waiting for the rest of the body.
    tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
        .await
        .expect("the replica's connection stayed open");
    // Nothing is counted in flight any more, and the metric names the cause.
    let metrics = admin(proxy.admin_addr, "/metrics").await.1;
    assert_eq!(
        sample(
            &metrics,
            r#"switchyard_upstream_errors_total{deployment="v1",environment="production",kind="client_body_timeout",model="m"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"switchyard_in_flight_requests{deployment="v1",environment="production",model="m"}"#
        ),
        Some(0.0)
    );
    proxy.shutdown().await;
}
