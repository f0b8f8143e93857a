//! Traffic lands on deployments in proportion to their weights, and a swapped snapshot is seen
//! by the next request.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_at_90_10_land_within_one_and_a_half_points() {
    let v1 = named("v1").await;
    let v2 = named("v2").await;
    let proxy = start(settings(spec(&[
        ("v1", vec![v1.addr], 90),
        ("v2", vec![v2.addr], 10),
    ])));
    let addr = proxy.listen_addr;
    // Four client connections in parallel, so both workers take part.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut c = h1(addr).await;
            let mut v2 = 0usize;
            for _ in 0..2_500 {
                let req = http::Request::get("/")
                    .header("host", "x")
                    .body(empty())
                    .unwrap();
                let got = collect(c.send_request(req).await.unwrap()).await;
                assert_eq!(got.status, 200);
                // Header and body must agree on who served it.
                assert_eq!(got.deployment(), Some(got.text().as_str()));
                if got.text() == "v2" {
                    v2 += 1;
                }
            }
            v2
        }));
    }
    let mut v2_total = 0;
    for t in tasks {
        v2_total += t.await.unwrap();
    }
    let share = v2_total as f64 / 10_000.0 * 100.0;
    assert!(
        (share - 10.0).abs() <= 1.5,
        "v2 got {share:.2}% of traffic, want 10 ± 1.5"
    );
    assert_eq!(
        v1.requests.load(std::sync::atomic::Ordering::SeqCst) + v2_total,
        10_000
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_swapped_snapshot_is_seen_by_the_next_request() {
    let v1 = named("v1").await;
    let v2 = named("v2").await;
    let proxy = start(settings(spec(&[
        ("v1", vec![v1.addr], 100),
        ("v2", vec![v2.addr], 0),
    ])));
    let mut c = h1(proxy.listen_addr).await;
    for _ in 0..20 {
        let got = collect(
            c.send_request(http::Request::get("/").body(empty()).unwrap())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.text(), "v1");
    }
    proxy
        .router()
        .apply(&spec(&[
            ("v1", vec![v1.addr], 0),
            ("v2", vec![v2.addr], 100),
        ]))
        .unwrap();
    // Same client connection: the very next request follows the new weights.
    for _ in 0..20 {
        let got = collect(
            c.send_request(http::Request::get("/").body(empty()).unwrap())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.text(), "v2");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn load_spreads_to_the_replica_with_fewer_outstanding_requests() {
    // Replica A holds every request for 300 ms; B answers at once. With P2C on outstanding
    // requests, concurrent traffic must favour B heavily.
    let slow = upstream(|_req| async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        http::Response::new(full("slow"))
    })
    .await;
    let fast = named("fast").await;
    let proxy = start(settings(spec(&[("v1", vec![slow.addr, fast.addr], 100)])));
    let addr = proxy.listen_addr;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = h1(addr).await;
            let mut slow = 0;
            for _ in 0..10 {
                let got = collect(
                    c.send_request(http::Request::get("/").body(empty()).unwrap())
                        .await
                        .unwrap(),
                )
                .await;
                if got.text() == "slow" {
                    slow += 1;
                }
            }
            slow
        }));
    }
    let mut slow_hits = 0;
    for t in tasks {
        slow_hits += t.await.unwrap();
    }
    // Round robin would send 40 of 80 to the slow replica.
    assert!(
        slow_hits < 20,
        "slow replica got {slow_hits} of 80 requests"
    );
    proxy.shutdown().await;
}
