//! Which worker serves a client connection: a few connections share the first worker, more
//! spread evenly, whichever worker's listener the kernel gave each one to.

use std::time::Duration;

use http::Request;

use crate::support::*;

/// Opens a kept-alive connection and finishes one request on it, so it has been placed and
/// served (on whichever worker) before the next one opens.
async fn served_connection(proxy: &switchyard::server::RunningProxy) -> H1 {
    let mut c = h1(proxy.listen_addr).await;
    let got = served(&mut c, "/x").await;
    assert_eq!(&got.body[..], b"v1");
    c
}

async fn served(c: &mut H1, path: &str) -> Got {
    let got = collect(
        c.send_request(Request::get(path).body(empty()).unwrap())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    got
}

#[tokio::test]
async fn connections_fill_the_first_worker_then_spread_evenly() {
    let v1 = named("v1").await;
    let mut s = settings(spec(&[("v1", vec![v1.addr], 100)]));
    s.workers = 3;
    s.worker_fill_connections = 4;
    let proxy = start(s);
    let per_worker = || async { open_per_worker(&admin(proxy.admin_addr, "/metrics").await.1, 3) };

    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(served_connection(&proxy).await);
    }
    assert_eq!(
        per_worker().await,
        [3.0, 0.0, 0.0],
        "a few share the first worker"
    );

    for _ in 3..10 {
        clients.push(served_connection(&proxy).await);
    }
    assert_eq!(
        per_worker().await,
        [4.0, 4.0, 2.0],
        "then the next ones fill in turn"
    );

    for _ in 10..17 {
        clients.push(served_connection(&proxy).await);
    }
    let mut spread = per_worker().await;
    spread.sort_by(f64::total_cmp);
    assert_eq!(spread, [5.0, 6.0, 6.0], "past the fill, evenly");

    // The first four (on the first worker) close: the first worker is filled again first.
    drop(clients.drain(..4));
    let mut now = Vec::new();
    for _ in 0..100 {
        now = per_worker().await;
        if now.iter().sum::<f64>() == 13.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        now.iter().sum::<f64>(),
        13.0,
        "closed connections still counted: {now:?}"
    );
    let first_before = now[0];
    clients.push(served_connection(&proxy).await);
    assert_eq!(per_worker().await[0], first_before + 1.0);

    // Every connection, handed over or not, still serves requests.
    for c in &mut clients {
        let got = collect(
            c.send_request(Request::get("/y").body(empty()).unwrap())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 200);
    }
    proxy.shutdown().await;
}
