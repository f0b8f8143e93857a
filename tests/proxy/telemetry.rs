//! The admin listener's metrics and health endpoints.

use crate::support::*;

#[tokio::test]
async fn metrics_show_per_deployment_series_and_drop_removed_ones() {
    let v1 = named("v1").await;
    let v2 = named("v2").await;
    let proxy = start(settings(spec(&[
        ("v1", vec![v1.addr], 50),
        ("v2", vec![v2.addr], 50),
    ])));
    for _ in 0..10 {
        get(proxy.listen_addr, "/deployment/v1/x").await;
    }
    for _ in 0..4 {
        get(proxy.listen_addr, "/deployment/v2/x").await;
    }
    let (status, m) = admin(proxy.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let series = |name: &str, dep: &str| {
        format!("{name}{{deployment=\"{dep}\",environment=\"production\",model=\"m\"}}")
    };
    assert_eq!(sample(&m, "switchyard_requests_total{code=\"200\",deployment=\"v1\",environment=\"production\",model=\"m\"}"), Some(10.0), "{m}");
    assert_eq!(sample(&m, "switchyard_requests_total{code=\"200\",deployment=\"v2\",environment=\"production\",model=\"m\"}"), Some(4.0));
    assert_eq!(
        sample(
            &m,
            &series("switchyard_request_duration_seconds_count", "v1")
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(
            &m,
            &series("switchyard_time_to_first_byte_seconds_count", "v2")
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(&m, &series("switchyard_in_flight_requests", "v1")),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, &series("switchyard_traffic_weight", "v2")),
        Some(0.5)
    );
    assert_eq!(
        sample(&m, &series("switchyard_ready_replicas", "v1")),
        Some(1.0)
    );

    proxy
        .router()
        .apply(&spec(&[("v1", vec![v1.addr], 100)]))
        .unwrap();
    let (_, m) = admin(proxy.admin_addr, "/metrics").await;
    assert!(
        !m.contains("deployment=\"v2\""),
        "series of a removed deployment remain:\n{m}"
    );
    assert_eq!(
        sample(&m, &series("switchyard_traffic_weight", "v1")),
        Some(1.0)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn in_flight_counts_a_stream_until_its_body_ends() {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    let (tx_hold, rx_hold) = tokio::sync::oneshot::channel::<()>();
    let rx_hold = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx_hold)));
    let up = upstream(move |_req| {
        let rx = rx_hold.clone();
        async move {
            let (tx, body) = channel_body();
            let rx = rx.lock().await.take();
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"first")).await.unwrap();
                if let Some(rx) = rx {
                    let _ = rx.await;
                }
            });
            http::Response::new(body)
        }
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut c = h1(proxy.listen_addr).await;
    let resp = c
        .send_request(http::Request::get("/").body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    let gauge =
        "switchyard_in_flight_requests{deployment=\"v1\",environment=\"production\",model=\"m\"}";
    // Headers are long gone; the stream is still open, so it still counts.
    assert_eq!(
        sample(&admin(proxy.admin_addr, "/metrics").await.1, gauge),
        Some(1.0)
    );
    tx_hold.send(()).unwrap();
    while body.frame().await.is_some() {}
    let admin_addr = proxy.admin_addr;
    let mut last = None;
    for _ in 0..50 {
        last = sample(&admin(admin_addr, "/metrics").await.1, gauge);
        if last == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(last, Some(0.0));
    proxy.shutdown().await;
}

#[tokio::test]
async fn health_endpoints_answer_without_traffic() {
    let proxy = start(settings(spec(&[("v1", vec![], 100)])));
    assert_eq!(admin(proxy.admin_addr, "/livez").await.0, 200);
    assert_eq!(admin(proxy.admin_addr, "/readyz").await.0, 200);
    assert_eq!(admin(proxy.admin_addr, "/nope").await.0, 404);
    proxy.shutdown().await;
}

/// A scrape many parts long arrives whole, its families each once, and a scraper that hangs
/// up halfway does not stop the next one.
#[tokio::test]
async fn a_scrape_many_parts_long_streams_whole_and_survives_a_scraper_leaving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let v1 = named("v1").await;
    let ids: Vec<String> = (0..400).map(|i| format!("d{i}")).collect();
    let deployments: Vec<_> = ids
        .iter()
        .map(|id| (id.as_str(), vec![v1.addr], 1))
        .collect();
    let proxy = start(settings(spec(&deployments)));
    for _ in 0..100 {
        assert_eq!(get(proxy.listen_addr, "/").await.status, 200);
    }

    // A scraper that reads the head and a little of the body, then hangs up.
    let mut s = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0; 4096];
    let n = s.read(&mut first).await.unwrap();
    let head = String::from_utf8_lossy(&first[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("transfer-encoding: chunked"),
        "the exposition is not streamed: {head}"
    );
    drop(s);

    let (status, m) = admin(proxy.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(m.len() > 8 * 32 * 1024, "{} bytes", m.len());
    for id in &ids {
        let ready = format!(
            "switchyard_ready_replicas{{deployment=\"{id}\",environment=\"production\",model=\"m\"}}"
        );
        assert_eq!(sample(&m, &ready), Some(1.0), "{ready}");
    }
    let served: f64 = m
        .lines()
        .filter(|l| l.starts_with("switchyard_request_duration_seconds_count{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(served, 100.0);
    for family in [
        "switchyard_requests_total counter",
        "switchyard_ready_replicas gauge",
        "switchyard_request_duration_seconds histogram",
    ] {
        assert_eq!(
            m.matches(&format!("# TYPE {family}\n")).count(),
            1,
            "{family}"
        );
    }
    assert!(m.ends_with('\n'));
    proxy.shutdown().await;
}

#[tokio::test]
async fn each_worker_shows_the_client_connections_it_holds() {
    use http::Request;
    use std::time::Duration;
    let v1 = named("v1").await;
    let proxy = start(settings(spec(&[("v1", vec![v1.addr], 100)])));
    let open = |m: &str| open_per_worker(m, 2);
    let (_, m) = admin(proxy.admin_addr, "/metrics").await;
    assert_eq!(open(&m), [0.0, 0.0], "before any client");

    // Five kept-alive connections, each having finished a request: all five are open.
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = h1(proxy.listen_addr).await;
        let got = collect(
            c.send_request(Request::get("/x").body(empty()).unwrap())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 200);
        clients.push(c);
    }
    let (_, m) = admin(proxy.admin_addr, "/metrics").await;
    assert_eq!(open(&m).iter().sum::<f64>(), 5.0, "{m}");

    // Closed by the clients: the gauges go back to 0.
    drop(clients);
    let mut last = String::new();
    let mut closed = false;
    for _ in 0..100 {
        last = admin(proxy.admin_addr, "/metrics").await.1;
        if open(&last) == [0.0, 0.0] {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        closed,
        "connections still counted after the clients closed:\n{last}"
    );
    proxy.shutdown().await;
}
