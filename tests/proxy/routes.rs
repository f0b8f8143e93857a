//! Pinned routes (`/deployment/{id}/...`, `/environments/{env}/...`) and Host routing.

use http::Response;

use crate::support::*;

/// Echoes its name and the path it received.
async fn path_echo(name: &'static str) -> Upstream {
    upstream(move |req| async move { Response::new(full(format!("{name} {}", req.uri()))) }).await
}

#[tokio::test]
async fn deployment_prefix_pins_a_version_whatever_the_weights_and_is_stripped() {
    let v1 = path_echo("v1").await;
    let v2 = path_echo("v2").await;
    let proxy = start(settings(spec(&[
        ("v1", vec![v1.addr], 100),
        ("v2", vec![v2.addr], 0),
    ])));
    for _ in 0..10 {
        let got = get(
            proxy.listen_addr,
            "/deployment/v2/v1/chat/completions?stream=true",
        )
        .await;
        assert_eq!(got.text(), "v2 /v1/chat/completions?stream=true");
        assert_eq!(got.deployment(), Some("v2"));
    }
    assert_eq!(
        get(proxy.listen_addr, "/deployment/v2").await.text(),
        "v2 /"
    );
    let got = get(proxy.listen_addr, "/deployment/v9/predict").await;
    assert_eq!(got.status, 404);
    assert!(got.text().contains("\"v9\""), "{}", got.text());
    // Unprefixed traffic still follows the weights.
    assert_eq!(
        get(proxy.listen_addr, "/predict").await.text(),
        "v1 /predict"
    );
    proxy.shutdown().await;
}

const CONFIG: &str = r#"
[[models]]
id = "llama"
hosts = ["llama.example"]
[[models.deployments]]
id = "v1"
replicas = ["V1"]
[[models.deployments]]
id = "v2"
replicas = ["V2"]
[[models.environments]]
name = "production"
current = "v1"
[[models.environments]]
name = "staging"
hosts = ["staging.llama.example"]
current = "v2"

[[models]]
id = "whisper"
hosts = ["whisper.example"]
[[models.deployments]]
id = "w1"
replicas = ["W1"]
[[models.environments]]
name = "production"
current = "w1"
"#;

#[tokio::test]
async fn host_and_environment_prefix_choose_model_and_environment() {
    let v1 = path_echo("v1").await;
    let v2 = path_echo("v2").await;
    let w1 = path_echo("w1").await;
    let text = CONFIG
        .replace("\"V1\"", &format!("\"{}\"", v1.addr))
        .replace("\"V2\"", &format!("\"{}\"", v2.addr))
        .replace("\"W1\"", &format!("\"{}\"", w1.addr));
    let mut s = switchyard::config::parse_str(&text).unwrap();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.admin_listen = "127.0.0.1:0".parse().unwrap();
    let proxy = start(s);
    let at = |host: &'static str, path: &'static str| {
        let addr = proxy.listen_addr;
        async move {
            send(
                addr,
                http::Request::get(path)
                    .header("host", host)
                    .body(empty())
                    .unwrap(),
            )
            .await
            .text()
        }
    };
    assert_eq!(at("llama.example", "/predict").await, "v1 /predict");
    assert_eq!(at("LLAMA.example:8080", "/predict").await, "v1 /predict");
    assert_eq!(at("staging.llama.example", "/predict").await, "v2 /predict");
    assert_eq!(
        at("llama.example", "/environments/staging/predict").await,
        "v2 /predict"
    );
    assert_eq!(at("whisper.example", "/predict").await, "w1 /predict");
    // An unknown host goes to the first model's default environment.
    assert_eq!(at("other.example", "/predict").await, "v1 /predict");
    let got = send(
        proxy.listen_addr,
        http::Request::get("/environments/dev/x")
            .header("host", "whisper.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 404);
    assert!(
        got.text()
            .contains("\"whisper\" has no environment \"dev\""),
        "{}",
        got.text()
    );
    proxy.shutdown().await;
}
