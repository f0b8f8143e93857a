//! HTTP/1.1, h2c (prior knowledge), TLS with ALPN h2, and protocol upgrades on one listener.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// An upstream that reports the protocol version it was spoken to in.
async fn version_upstream() -> Upstream {
    upstream(|req| async move { Response::new(full(format!("{:?} {}", req.version(), req.uri()))) })
        .await
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_and_forwarded_as_http11() {
    let up = version_upstream().await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut c = h2c(proxy.listen_addr).await;
    // Several concurrent streams on one h2 connection.
    let mut pending = Vec::new();
    for i in 0..5 {
        let req = Request::get(format!("http://model.local/v1/chat?i={i}"))
            .body(empty())
            .unwrap();
        pending.push(c.send_request(req));
    }
    for (i, p) in pending.into_iter().enumerate() {
        let resp = p.await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        let got = collect(resp).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.deployment(), Some("v1"));
        assert_eq!(got.text(), format!("HTTP/1.1 /v1/chat?i={i}"));
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_protocol_is_told_right_when_the_first_bytes_arrive_in_pieces() {
    let up = version_upstream().await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));

    // HTTP/1.1 whose request line starts with bytes the HTTP/2 preface also starts with.
    let mut s = tokio::net::TcpStream::connect(proxy.listen_addr)
        .await
        .unwrap();
    s.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.write_all(b"OST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("HTTP/1.1 /p"), "{out}");

    // The HTTP/2 preface split in two writes is still HTTP/2: the proxy answers with its SETTINGS.
    let mut s = tokio::net::TcpStream::connect(proxy.listen_addr)
        .await
        .unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut frame_head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut frame_head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame_head[3], 4, "first frame is SETTINGS: {frame_head:?}");
    proxy.shutdown().await;
}

struct Certs {
    dir: std::path::PathBuf,
    cert_pem: String,
}

fn self_signed() -> Certs {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "switchyard-tls-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    Certs { dir, cert_pem }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    certs: &Certs,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test]
async fn tls_negotiates_h2_by_alpn_and_still_serves_http11() {
    let up = version_upstream().await;
    let certs = self_signed();
    let mut s = settings(spec(&[("v1", vec![up.addr], 100)]));
    s.tls = Some(switchyard::config::TlsFiles {
        cert: certs.dir.join("cert.pem"),
        key: certs.dir.join("key.pem"),
    });
    let proxy = start(s);

    let tls = tls_connect(proxy.listen_addr, &certs, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut c, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = c
        .send_request(
            Request::get("https://localhost/secure")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let got = collect(resp).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "HTTP/1.1 /secure");

    let tls = tls_connect(proxy.listen_addr, &certs, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut c, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/plain")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let got = collect(c.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "HTTP/1.1 /plain");
    proxy.shutdown().await;
    let _ = std::fs::remove_dir_all(&certs.dir);
}

#[tokio::test]
async fn a_bad_tls_key_is_refused_at_start_naming_the_file() {
    let certs = self_signed();
    std::fs::write(certs.dir.join("key.pem"), "not a key").unwrap();
    let mut s = settings(spec(&[("v1", vec![], 100)]));
    s.tls = Some(switchyard::config::TlsFiles {
        cert: certs.dir.join("cert.pem"),
        key: certs.dir.join("key.pem"),
    });
    let err = switchyard::server::start(s).err().expect("start must fail");
    assert!(err.to_string().contains("key.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&certs.dir);
}

#[tokio::test]
async fn websocket_style_upgrades_pass_through() {
    // The upstream accepts an upgrade to "echo" and echoes bytes back on the raw connection.
    let up = upstream(|mut req| async move {
        assert_eq!(req.headers()["upgrade"], "echo");
        tokio::spawn(async move {
            let upgraded = hyper::upgrade::on(&mut req).await.unwrap();
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            loop {
                let n = io.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await.unwrap();
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(empty())
            .unwrap()
    })
    .await;
    let proxy = start(settings(spec(&[("v1", vec![up.addr], 100)])));
    let mut c = h1(proxy.listen_addr).await;
    let req = Request::get("/ws")
        .header("host", "x")
        .header("connection", "Upgrade")
        .header("upgrade", "echo")
        .body(empty())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "echo");
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    for msg in [&b"ping"[..], b"second message"] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(2), io.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
    proxy.shutdown().await;
}
