//! The same requests, sent straight to the upstream and through switchyard, get the same
//! answers (apart from the headers the proxy is meant to add or drop).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::support::*;

/// An upstream that describes what it received, and answers in several shapes by path.
async fn echo_upstream() -> Upstream {
    upstream(|req| async move {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let mut seen: Vec<String> = parts
            .headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-test"))
            .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
            .collect();
        seen.sort();
        match parts.uri.path() {
            "/no-content" => Response::builder().status(204).body(empty()).unwrap(),
            "/not-modified" => Response::builder()
                .status(304)
                .header("etag", "\"abc\"")
                .body(empty())
                .unwrap(),
            "/teapot" => Response::builder()
                .status(418)
                .header("x-test-reply", "short and stout")
                .body(full("teapot"))
                .unwrap(),
            "/cookies" => Response::builder()
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2")
                .body(full("two cookies"))
                .unwrap(),
            "/big" => {
                let (tx, b) = channel_body();
                tokio::spawn(async move {
                    for i in 0..64u8 {
                        tx.send(Bytes::from(vec![i; 64 * 1024])).await.unwrap();
                    }
                });
                Response::builder()
                    .header("content-type", "application/octet-stream")
                    .body(b)
                    .unwrap()
            }
            path if path.starts_with("/sized/") => {
                // `/sized/BODY/HEADER`: BODY bytes of body, a header of HEADER bytes.
                let mut n = path["/sized/".len()..]
                    .split('/')
                    .map(|n| n.parse::<usize>().unwrap());
                let (body, header) = (n.next().unwrap(), n.next().unwrap());
                Response::builder()
                    .header("x-test-pad", "h".repeat(header))
                    .body(full(
                        (0..body)
                            .map(|i| b'a' + (i % 26) as u8)
                            .collect::<Vec<u8>>(),
                    ))
                    .unwrap()
            }
            _ => Response::builder()
                .header("content-type", "text/plain")
                .header("x-test-method", parts.method.as_str())
                .body(full(format!(
                    "{} {} body={} sum={} headers={:?}",
                    parts.method,
                    parts.uri,
                    body.len(),
                    body.iter().map(|b| u64::from(*b)).sum::<u64>(),
                    seen
                )))
                .unwrap(),
        }
    })
    .await
}

struct Case {
    name: &'static str,
    req: fn() -> Request<TestBody>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "get",
            req: || {
                Request::get("/hello?a=1&b=%20x")
                    .header("host", "t")
                    .body(empty())
                    .unwrap()
            },
        },
        Case {
            name: "post 1 MiB",
            req: || {
                Request::post("/upload")
                    .header("host", "t")
                    .body(full(vec![7u8; 1 << 20]))
                    .unwrap()
            },
        },
        Case {
            name: "chunked request body",
            req: || {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        tx.send(Bytes::from_static(b"0123456789")).await.unwrap();
                    }
                });
                Request::put("/chunked")
                    .header("host", "t")
                    .body(body)
                    .unwrap()
            },
        },
        Case {
            name: "head",
            req: || {
                Request::head("/hello")
                    .header("host", "t")
                    .body(empty())
                    .unwrap()
            },
        },
        Case {
            name: "delete",
            req: || {
                Request::delete("/item/1")
                    .header("host", "t")
                    .body(empty())
                    .unwrap()
            },
        },
        Case {
            name: "custom headers, repeated",
            req: || {
                Request::get("/h")
                    .header("host", "t")
                    .header("x-test-a", "1")
                    .header("x-test-a", "2")
                    .header("x-test-b", "with, commas")
                    .body(empty())
                    .unwrap()
            },
        },
        Case {
            name: "204",
            req: || {
                Request::get("/no-content")
                    .header("host", "t")
                    .body(empty())
                    .unwrap()
            },
        },
        Case {
            name: "304",
            req: || {
                Request::get("/not-modified")
                    .header("host", "t")
                    .body(empty())
                    .unwrap()
            },
        },
        Case {
            name: "418 with body",
            req: || {
                Request::get("/teapot")
                    .header("host", "t")
                    .body(empty())
                    .unwrap()
            },
        },
        Case {
            name: "set-cookie twice",
            req: || {
                Request::get("/cookies")
                    .header("host", "t")
                    .body(empty())
                    .unwrap()
            },
        },
        Case {
            name: "4 MiB streamed response",
            req: || {
                Request::get("/big")
                    .header("host", "t")
                    .body(empty())
                    .unwrap()
            },
        },
    ]
}

/// What must match between direct and proxied answers.
#[derive(Debug, PartialEq)]
struct Answer {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Bytes,
}

async fn ask(addr: SocketAddr, req: Request<TestBody>) -> Answer {
    let mut c = h1(addr).await;
    let resp = c.send_request(req).await.unwrap();
    let got = collect(resp).await;
    let mut headers: Vec<(String, String)> = got
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-switchyard-deployment"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    headers.sort();
    Answer {
        status: got.status,
        headers,
        body: got.body,
    }
}

#[tokio::test]
async fn every_case_answers_the_same_direct_and_through_the_proxy() {
    let up = echo_upstream().await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    for case in cases() {
        let direct = ask(up.addr, (case.req)()).await;
        let proxied = ask(proxy.listen_addr, (case.req)()).await;
        assert_eq!(direct, proxied, "case {:?} differs", case.name);
    }
    proxy.shutdown().await;
}

/// The proxy sizes each upstream connection's first read by the responses it carried before:
/// small ones shrink it, ones that fill it grow it. Responses of every size, one after another
/// on the same pooled connection, heads larger than the read included, arrive whole.
#[tokio::test]
async fn responses_of_every_size_in_a_row_arrive_whole() {
    let up = echo_upstream().await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let shapes: [(usize, usize); 12] = [
        (10, 0),
        (10, 0),
        (10, 0),
        (1_500, 0),
        (5_000, 0),
        (10, 0),
        (70_000, 0),
        (10, 0),
        (10, 0),
        (10, 6_000),
        (0, 20_000),
        (3_000, 3_000),
    ];
    for (body, header) in shapes {
        let req = || {
            Request::get(format!("/sized/{body}/{header}"))
                .header("host", "t")
                .body(empty())
                .unwrap()
        };
        let direct = ask(up.addr, req()).await;
        let proxied = ask(proxy.listen_addr, req()).await;
        assert_eq!(
            proxied.body.len(),
            body,
            "body of {body} bytes after a {header}-byte header"
        );
        assert_eq!(direct, proxied, "{body}-byte body, {header}-byte header");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways_and_forwarding_headers_added() {
    let up = upstream(|req| async move {
        let mut names: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        names.sort();
        let xff = req
            .headers()
            .get("x-forwarded-for")
            .map(|v| v.to_str().unwrap().to_string());
        let proto = req
            .headers()
            .get("x-forwarded-proto")
            .map(|v| v.to_str().unwrap().to_string());
        let host = req
            .headers()
            .get("x-forwarded-host")
            .map(|v| v.to_str().unwrap().to_string());
        Response::builder()
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "secret")
            .header("keep-alive", "timeout=5")
            .body(full(format!("{names:?}|{xff:?}|{proto:?}|{host:?}")))
            .unwrap()
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let req = Request::get("/")
        .header("host", "model.example")
        .header("connection", "keep-alive, x-private-a")
        .header("connection", "X-Private-B")
        .header("x-private-a", "1")
        .header("x-private-b", "2")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-kept", "yes")
        .body(empty())
        .unwrap();
    let got = send(proxy.listen_addr, req).await;
    let text = got.text();
    let (names, rest) = text.split_once('|').unwrap();
    for gone in [
        "connection",
        "x-private-a",
        "x-private-b",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert!(
            !names.contains(&format!("\"{gone}\"")),
            "{gone} reached the upstream: {names}"
        );
    }
    assert!(names.contains("\"x-kept\""), "{names}");
    assert_eq!(
        rest,
        // Both of the client's lines, joined, then the client itself.
        "Some(\"203.0.113.9, 198.51.100.7, 127.0.0.1\")|Some(\"http\")|Some(\"model.example\")"
    );
    assert!(
        got.headers.get("x-upstream-private").is_none(),
        "{:?}",
        got.headers
    );
    assert!(got.headers.get("keep-alive").is_none(), "{:?}", got.headers);
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_deployment_header_can_be_switched_off() {
    let up = named("v1").await;
    let mut s = settings(spec(&[("v1", vec![up.addr], 100)]));
    s.deployment_header = false;
    let proxy = start(s);
    let got = get(proxy.listen_addr, "/").await;
    assert_eq!(got.status, 200);
    assert!(got.deployment().is_none());
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_cannot_use_connection_to_strip_what_the_proxy_adds() {
    let up = upstream(|req| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        Response::new(full(format!(
            "{:?}|{:?}|{:?}",
            h("x-forwarded-for"),
            h("x-forwarded-host"),
            h("host")
        )))
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let req = Request::get("/")
        .header("host", "model.example")
        .header("connection", "x-forwarded-for, x-forwarded-host, host")
        .header("x-forwarded-for", "203.0.113.9")
        .body(empty())
        .unwrap();
    let got = send(proxy.listen_addr, req).await;
    // The client's own X-Forwarded-For was listed, so it goes; the proxy's entry stays.
    assert_eq!(
        got.text(),
        "Some(\"127.0.0.1\")|Some(\"model.example\")|Some(\"model.example\")"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn connect_is_refused_not_forwarded() {
    let up = named("v1").await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut s = tokio::net::TcpStream::connect(proxy.listen_addr)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 405");
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_http10_request_without_host_reaches_the_replica_with_one() {
    let up = upstream(|req| async move {
        let host = req
            .headers()
            .get("host")
            .map(|v| v.to_str().unwrap().to_string());
        Response::new(full(format!("{host:?}")))
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let out = raw_exchange(proxy.listen_addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(out.ends_with(&format!("Some(\"{}\")", up.addr)), "{out}");
    proxy.shutdown().await;
}

/// RFC 9112 3.2: two Host headers, or an HTTP/1.1 request with none, is a 400 that never
/// reaches a replica.
#[tokio::test]
async fn a_request_with_two_hosts_or_an_http11_request_with_none_is_refused() {
    let up = named("v1").await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
    ] {
        let out = raw_exchange(proxy.listen_addr, raw).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    proxy.shutdown().await;
}

/// Framing hyper's server accepts leniently (bare LF line ends, `Transfer-Encoding: identity,
/// chunked`) is read exactly as hyper reads it and forwarded re-framed with CRLF and one length:
/// the replica sees well-formed requests, and a pipelined request behind it is not desynced.
#[tokio::test]
async fn lenient_framing_is_normalised_and_never_desyncs_a_pipeline() {
    let up = upstream(|req| async move {
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(format!(
            "{path} got {:?}",
            String::from_utf8_lossy(&body)
        )))
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let out = raw_exchange(
        proxy.listen_addr,
        b"POST /lf HTTP/1.1\nHost: x\nContent-Length: 2\nConnection: close\n\nhi",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("/lf got \"hi\""),
        "{out}"
    );
    let out = raw_exchange(
        proxy.listen_addr,
        b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let answers: Vec<&str> = out.matches("HTTP/1.1 200").collect();
    assert_eq!(answers.len(), 2, "{out}");
    assert!(
        out.contains("/te got \"hello\"") && out.ends_with("/next got \"\""),
        "{out}"
    );
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    proxy.shutdown().await;
}
