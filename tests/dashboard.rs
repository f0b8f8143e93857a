//! The dashboard's server side against a real `switchyard demo`: the page and its assets are
//! served without the key, with their types, `no-cache`, a self-only CSP and every test hook;
//! the figures and plan endpoints need the key, are in the OpenAPI document, show real traffic,
//! and the plan is `switchyard plan`'s.
//!
//! The page itself runs in a real browser in tests/compat/dashboard_browser.py.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

const KEY: &str = "dashboard-test-key-0123456789";

mod common;

use common::{admin_addr_of, bin, KillOnDrop};

fn start_demo() -> (KillOnDrop, SocketAddr, SocketAddr) {
    let child = bin()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("SWITCHYARD_API_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut demo = KillOnDrop(child);
    let (proxy, admin) = admin_addr_of(&mut demo.0);
    (demo, proxy, admin)
}

/// One HTTP/1.1 request on a fresh connection: (status, lower-cased head, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = key.map_or(String::new(), |k| format!("authorization: Api-Key {k}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    // Chunked bodies (the API's JSON) are one chunk here: strip the framing.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut rest = body;
        let mut joined = String::new();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            joined.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        joined
    } else {
        body.to_owned()
    };
    (status, head.to_ascii_lowercase(), body)
}

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, _, body) = request(addr, "GET", path, Some(KEY), "");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

const ENV: &str = "/v1/models/demo/environments/production";

#[test]
fn the_dashboard_and_its_endpoints_are_served() {
    let (_demo, proxy, admin) = start_demo();

    // The page and its assets: no key needed, typed, never cached stale, self-only.
    let mut weight = 0;
    for (path, ctype) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let (status, head, body) = request(admin, "GET", path, None, "");
        assert_eq!(status, 200, "{path}");
        assert!(
            head.contains(&format!("content-type: {ctype}")),
            "{path}: {head}"
        );
        assert!(head.contains("cache-control: no-cache"), "{path}: {head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
            "{path}: {head}"
        );
        weight += body.len();
        if path == "/" {
            for hook in [
                "api-key-input",
                "api-key-submit",
                "status-strip",
                "split-percent",
                "promote-select",
                "promote-button",
                "pause-button",
                "resume-button",
                "cancel-button",
                "force-cancel-button",
                "force-roll-forward-button",
                "event-log",
                "replicas-previous",
                "replicas-candidate",
            ] {
                assert!(
                    body.contains(&format!("data-testid=\"{hook}\"")),
                    "no {hook} hook"
                );
            }
            // Nothing from elsewhere: every script and style is the listener's own.
            assert!(!body.contains("http://") && !body.contains("https://"));
        }
    }
    assert!(weight < 150 * 1024, "the page weighs {weight} bytes");

    // The data endpoints need the key like the rest of the API.
    for path in ["/figures", "/plan"] {
        let (status, _, _) = request(admin, "GET", &format!("{ENV}{path}"), None, "");
        assert_eq!(status, 401, "{path} without a key");
        let (status, _, body) = request(
            admin,
            "GET",
            &format!("/v1/models/nope/environments/production{path}"),
            Some(KEY),
            "",
        );
        assert_eq!(status, 404, "{path} of an unknown model: {body}");
    }

    // Both are documented.
    let (_, _, doc) = request(admin, "GET", "/openapi.json", None, "");
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    for (path, op) in [
        ("figures", "getEnvironmentFigures"),
        ("plan", "getEnvironmentPlan"),
    ] {
        let p = &doc["paths"][format!("/v1/models/{{model_id}}/environments/{{env_name}}/{path}")];
        assert_eq!(p["get"]["operationId"], op, "{path} in /openapi.json");
    }

    // The plan is `switchyard plan`'s for the demo's 2 replicas and settings.
    let plan = json(admin, &format!("{ENV}/plan"));
    assert_eq!(plan["in_progress"], false);
    assert_eq!(plan["previous_replicas"], 2);
    assert_eq!(plan["current_step"], serde_json::Value::Null);
    let cli = bin()
        .args([
            "plan",
            "--replicas",
            "2",
            "--max-surge-percent",
            "34",
            "--stabilization-time-seconds",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(
        plan["steps"], cli["steps"],
        "the same steps as `switchyard plan`"
    );
    assert_eq!(plan["fleet"], cli["fleet"]);

    // Real traffic shows in the figures within two windows. Sent once v1 serves: before,
    // requests are refused and rightly count as errors.
    let deadline = Instant::now() + Duration::from_secs(30);
    while json(admin, ENV)["current_deployment"]["replicas"]["ready"] != 2 {
        assert!(Instant::now() < deadline, "v1 never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut answers = std::collections::BTreeMap::<String, u32>::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let point = loop {
        for _ in 0..5 {
            let mut s = TcpStream::connect(proxy).unwrap();
            let body = r#"{"max_tokens": 4}"#;
            write!(
                s,
                "POST /v1/chat/completions HTTP/1.1\r\nhost: demo\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            *answers.entry(out.chars().take(12).collect()).or_default() += 1;
        }
        let f = json(admin, &format!("{ENV}/figures"));
        assert_eq!(f["interval_seconds"], 5);
        assert_eq!(f["window_seconds"], 300);
        let busy = f["deployments"].as_array().unwrap().iter().find_map(|d| {
            let p = d["points"]
                .as_array()?
                .iter()
                .rev()
                .find(|p| p["requests_per_s"].as_f64() > Some(0.0))?;
            Some((d["deployment_id"].clone(), p.clone()))
        });
        if let Some(found) = busy {
            break found;
        }
        assert!(Instant::now() < deadline, "no traffic in the figures: {f}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(point.0, "v1");
    assert!(
        point.1["p99_latency_ms"].as_f64() > Some(1.0),
        "{}",
        point.1
    );
    assert!(point.1["p99_ttfb_ms"].as_f64() > Some(0.0), "{}", point.1);
    assert_eq!(
        point.1["error_rate_percent"].as_f64(),
        Some(0.0),
        "{}",
        point.1
    );

    // During a promotion the plan is the promotion's, with its step marked.
    let (status, _, body) = request(
        admin,
        "POST",
        &format!("{ENV}/promote"),
        Some(KEY),
        r#"{"deployment_id": "v2"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let plan = json(admin, &format!("{ENV}/plan"));
        if plan["in_progress"] == true && plan["current_step"].is_u64() {
            break;
        }
        assert!(Instant::now() < deadline, "no current step: {plan}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
