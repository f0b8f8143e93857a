//! What clients see when replicas are down, slow or broken; retries only when nothing was sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::*;

const CONNECT_ERRORS: &str = "switchyard_upstream_errors_total{deployment=\"v1\",environment=\"production\",kind=\"connect\",model=\"m\"}";

#[tokio::test]
async fn connect_failures_retry_on_another_replica_and_eject_the_dead_one() {
    let live = named("live").await;
    let dead = dead_addr().await;
    let mut s = settings(spec(&[("v1", vec![dead, live.addr], 100)]));
    s.upstream.eject_after_failures = 2;
    s.upstream.eject_duration = Duration::from_secs(60);
    let proxy = start(s);
    for _ in 0..60 {
        let got = get(proxy.listen_addr, "/").await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.text(), "live");
    }
    let (_, metrics) = admin(proxy.admin_addr, "/metrics").await;
    // Two failures eject the dead replica; it is not tried again within the eject period.
    assert_eq!(sample(&metrics, CONNECT_ERRORS), Some(2.0), "{metrics}");
    assert_eq!(live.requests.load(Ordering::SeqCst), 60);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_ejected_replica_gets_traffic_again_after_the_back_off() {
    let dead = dead_addr().await;
    let live = named("live").await;
    let mut s = settings(spec(&[("v1", vec![dead, live.addr], 100)]));
    s.upstream.eject_after_failures = 1;
    s.upstream.eject_duration = Duration::from_millis(300);
    let proxy = start(s);
    for _ in 0..20 {
        assert_eq!(get(proxy.listen_addr, "/").await.status, 200);
    }
    // The ejection happened before now, so it ends by now + its duration.
    let ejected_by = tokio::time::Instant::now();
    let (_, m) = admin(proxy.admin_addr, "/metrics").await;
    let before = sample(&m, CONNECT_ERRORS).unwrap();
    assert_eq!(before, 1.0);
    // A wall-clock wait: the back-off runs on the proxy workers' own runtimes, whose clocks
    // a paused test clock would not move.
    tokio::time::sleep_until(ejected_by + Duration::from_millis(300)).await;
    for _ in 0..20 {
        assert_eq!(get(proxy.listen_addr, "/").await.status, 200);
    }
    let (_, m) = admin(proxy.admin_addr, "/metrics").await;
    assert_eq!(
        sample(&m, CONNECT_ERRORS),
        Some(2.0),
        "the replica is probed again after its back-off"
    );
    proxy.shutdown().await;
}

/// Ejection steers traffic to a pool's other replicas; with none left it must not turn into
/// a 503 for every request of the eject period once the replica answers again (a burst of
/// connects that overflowed its accept queue once, say). The ejected replica is the last
/// resort, as a lone server is in nginx and a cluster in panic is in Envoy.
#[tokio::test]
async fn a_pool_whose_only_replica_is_ejected_still_tries_it() {
    let addr = dead_addr().await;
    let mut s = settings(spec(&[("v1", vec![addr], 100)]));
    s.upstream.eject_after_failures = 1;
    s.upstream.eject_duration = Duration::from_secs(60);
    let proxy = start(s);
    // Refused, and ejected for a minute.
    let got = get(proxy.listen_addr, "/").await;
    assert_eq!(got.status, 502, "{}", got.text());
    let (_, m) = admin(proxy.admin_addr, "/metrics").await;
    assert_eq!(sample(&m, CONNECT_ERRORS), Some(1.0), "{m}");

    let back = upstream_on(TcpListener::bind(addr).await.unwrap(), |_req| async {
        Response::new(full("back"))
    });
    for i in 0..10 {
        let got = get(proxy.listen_addr, "/").await;
        assert_eq!(got.status, 200, "request {i}: {}", got.text());
        assert_eq!(got.text(), "back");
    }
    assert_eq!(back.requests.load(Ordering::SeqCst), 10);
    let (_, m) = admin(proxy.admin_addr, "/metrics").await;
    assert_eq!(sample(&m, CONNECT_ERRORS), Some(1.0), "{m}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn no_reachable_replica_is_a_502_naming_deployment_and_replica() {
    let dead = dead_addr().await;
    let proxy = start(settings(spec(&[("v1", vec![dead], 100)])));
    let got = get(proxy.listen_addr, "/").await;
    assert_eq!(got.status, 502);
    assert!(
        got.text().contains("\"v1\"") && got.text().contains(&dead.to_string()),
        "{}",
        got.text()
    );
    assert_eq!(got.deployment(), Some("v1"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_deployment_without_ready_replicas_is_a_503() {
    let v1 = named("v1").await;
    let proxy = start(settings(spec(&[
        ("v1", vec![v1.addr], 0),
        ("v2", vec![], 100),
    ])));
    let got = get(proxy.listen_addr, "/").await;
    assert_eq!(got.status, 503);
    assert!(
        got.text().contains("\"v2\" has no ready replica"),
        "{}",
        got.text()
    );
    let (_, m) = admin(proxy.admin_addr, "/metrics").await;
    assert_eq!(
        sample(&m, "switchyard_requests_total{code=\"503\",deployment=\"v2\",environment=\"production\",model=\"m\"}"),
        Some(1.0)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_response_headers_are_a_504() {
    // Never answers.
    let slow = upstream(|_req| std::future::pending::<Response<TestBody>>()).await;
    let mut s = settings(spec(&[("v1", vec![slow.addr], 100)]));
    s.upstream.response_header_timeout = Some(Duration::from_millis(200));
    let proxy = start(s);
    let started = std::time::Instant::now();
    let got = get(proxy.listen_addr, "/").await;
    assert_eq!(got.status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(got.text().contains("no response headers"), "{}", got.text());
    proxy.shutdown().await;
}

/// Each upstream connection keeps one response-header timer and moves it to every request's
/// deadline: a deadline that passed while the connection sat in the pool must not cut the next
/// request, and a later request on the same connection must still be cut when it is slow.
#[tokio::test]
async fn the_response_header_timeout_holds_for_every_request_on_a_pooled_connection() {
    let up = upstream(|req| async move {
        if req.uri().path() == "/slow" {
            std::future::pending::<()>().await;
        }
        Response::new(full("ok"))
    })
    .await;
    let mut s = settings(spec(&[("v1", vec![up.addr], 100)]));
    s.upstream.response_header_timeout = Some(Duration::from_millis(300));
    let proxy = start(s);
    let mut c = h1(proxy.listen_addr).await;
    async fn status(c: &mut H1, path: &'static str) -> u16 {
        let req = http::Request::get(path).body(empty()).unwrap();
        c.send_request(req).await.unwrap().status().as_u16()
    }
    assert_eq!(status(&mut c, "/").await, 200);
    // Idle in the pool well past the first request's deadline.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(status(&mut c, "/").await, 200);
    assert_eq!(status(&mut c, "/").await, 200);
    let started = std::time::Instant::now();
    assert_eq!(status(&mut c, "/slow").await, 504);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status(&mut c, "/").await, 200);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        2,
        "one pooled connection for the fast requests, then a new one after the cut"
    );
    proxy.shutdown().await;
}

/// A raw upstream that reads a request and closes the connection without answering.
async fn hang_up_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if let Ok(n) = sock.read(&mut buf).await {
                    if n > 0 {
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                }
                drop(sock);
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_request_that_reached_a_replica_is_never_retried() {
    let (a, seen_a) = hang_up_upstream().await;
    let (b, seen_b) = hang_up_upstream().await;
    let proxy = start(settings(spec(&[("v1", vec![a, b], 100)])));
    let got = send(
        proxy.listen_addr,
        http::Request::post("/v1/completions")
            .header("host", "x")
            .body(full("{\"prompt\":\"hi\"}"))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 502);
    assert!(got.text().contains("failed the request"), "{}", got.text());
    // No wait needed: an upstream counts a request before it hangs up, and the proxy answers
    // only after the hang-up of its last attempt, so a retry would already be counted.
    assert_eq!(
        seen_a.load(Ordering::SeqCst) + seen_b.load(Ordering::SeqCst),
        1,
        "the request was sent twice"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn idle_upstream_connections_closed_by_the_replica_are_not_used() {
    // hyper's server closes each connection after one response here (keep-alive off), so the
    // pooled connection is dead by the second request; the proxy must notice, not fail.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full("once")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                let _ = closed_tx.send(());
            });
        }
    });
    let proxy = start(settings(spec(&[("v1", vec![addr], 100)])));
    let mut c = h1(proxy.listen_addr).await;
    for _ in 0..20 {
        let got = collect(
            c.send_request(http::Request::get("/").body(empty()).unwrap())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.text());
        // The replica has closed that connection before the next request goes out.
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("the replica did not close the connection");
    }
    // A request sent again on a fresh connection is still one request: one latency sample,
    // and none left in flight.
    let (_, m) = admin(proxy.admin_addr, "/metrics").await;
    let l = "deployment=\"v1\",environment=\"production\",model=\"m\"";
    let count = format!("switchyard_request_duration_seconds_count{{{l}}}");
    let in_flight = format!("switchyard_in_flight_requests{{{l}}}");
    assert_eq!(sample(&m, &count), Some(20.0), "{m}");
    assert_eq!(sample(&m, &in_flight), Some(0.0), "{m}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_endpoints_are_probed_and_a_closed_port_is_never_ready() {
    let live = named("live").await;
    let dead = dead_addr().await;
    let mut s = settings(spec(&[("v1", vec![dead, live.addr], 100)]));
    s.upstream.static_probe_interval = Some(Duration::from_millis(100));
    let proxy = start(s);
    // Probed before the first routing: the closed port was never routed to.
    let v = proxy.controller().environment("m", "production").unwrap();
    assert_eq!(v.deployments["v1"].ready_replicas, 1, "{v:#?}");
    for _ in 0..30 {
        assert_eq!(get(proxy.listen_addr, "/").await.text(), "live");
    }
    let (_, metrics) = admin(proxy.admin_addr, "/metrics").await;
    assert_eq!(
        sample(&metrics, CONNECT_ERRORS).unwrap_or(0.0),
        0.0,
        "{metrics}"
    );
    // Once something listens there, the next probe admits it.
    let back = tokio::net::TcpListener::bind(dead).await.unwrap();
    let mut passes = proxy.controller().changed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        passes.borrow_and_update();
        let v = proxy.controller().environment("m", "production").unwrap();
        if v.deployments["v1"].ready_replicas == 2 {
            break;
        }
        assert!(
            tokio::time::timeout_at(deadline, passes.changed())
                .await
                .is_ok(),
            "the endpoint never became ready: {v:#?}"
        );
    }
    drop(back);
    proxy.shutdown().await;
}

/// A listening port whose accept queue is full: the kernel drops further SYNs, so a connect
/// to it waits (SYN retransmits) until the connecting side gives up. The returned sockets
/// keep it that way.
async fn stalled_addr() -> (
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
    tokio::net::TcpListener,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    // A backlog of 0 holds one connection that nobody accepts.
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => held.push(s),
                Err(_) => return held,
            }
        }
        panic!(
            "{addr}: the accept queue did not fill after {} connections",
            held.len()
        );
    })
    .await
    .unwrap();
    (addr, held, listener)
}

/// A request counts against its replica from the moment it chose it, not from the moment it
/// has a connection: while one request waits to connect to a replica, the least-outstanding
/// pick sends the next requests elsewhere. Counted from the connection, the waiting replica
/// looked idle and took about half of them (a burst on a replica whose connections are slow to
/// open, such as a fresh one, piled up there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_to_connect_counts_against_its_replica() {
    let fast = named("fast").await;
    let (stalled, _held, _listener) = stalled_addr().await;
    let mut s = settings(spec(&[("v1", vec![fast.addr, stalled], 100)]));
    s.upstream.connect_timeout = Duration::from_secs(30);
    s.shutdown_grace = Duration::from_secs(1);
    let proxy = start(s);
    let addr = proxy.listen_addr;

    // Between two idle replicas the pick is a coin toss: send until one request is stuck.
    let mut stuck = None;
    for _ in 0..30 {
        let mut req = tokio::spawn(async move { get(addr, "/").await });
        match tokio::time::timeout(Duration::from_secs(2), &mut req).await {
            Ok(got) => assert_eq!(got.unwrap().text(), "fast"),
            Err(_) => {
                stuck = Some(req);
                break;
            }
        }
    }
    let stuck = stuck.expect("30 requests and none chose the stalled replica");
    let served = fast.requests.load(Ordering::SeqCst);

    // The stalled replica now has one request outstanding and the fast one none after each
    // answer: every pick compares the two and takes the fast one.
    for i in 0..20 {
        let got = tokio::time::timeout(Duration::from_secs(5), get(addr, "/"))
            .await
            .unwrap_or_else(|_| panic!("request {i} went to the replica still connecting"));
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "fast");
    }
    assert_eq!(fast.requests.load(Ordering::SeqCst), served + 20);
    assert!(
        !stuck.is_finished(),
        "the first request should still be connecting"
    );
    stuck.abort();
    proxy.shutdown().await;
}
