//! TLS termination with rustls: certificates and key from PEM files, ALPN h2 then http/1.1.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, TlsFiles};

pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, ConfigError> {
    let bad = |field: &str, path: &std::path::Path, msg: String| ConfigError {
        field: field.to_owned(),
        message: format!("{}: {msg}", path.display()),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("tls cert", &files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("tls cert", &files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "tls cert",
            &files.cert,
            "no CERTIFICATE block found".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("tls key", &files.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls cert", &files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                "tls key",
                &files.key,
                format!("does not match the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
