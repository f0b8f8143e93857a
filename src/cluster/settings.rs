//! `--store etcd://HOST:PORT[,HOST:PORT...]` and its companions, checked.

/// Where several instances share their state.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedStoreSettings {
    /// gRPC endpoints, `http://host:port`.
    pub endpoints: Vec<String>,
    /// Every key lives under it; ends with `/`.
    pub prefix: String,
    /// etcd user and password, when etcd has authentication on.
    pub credential: Option<(String, String)>,
    /// The leader's lease: a stalled or killed leader is replaced after about this long.
    pub lease_ttl_seconds: u32,
    /// This instance's name in the cluster (default: host name and admin port).
    pub instance_name: Option<String>,
    /// TLS to etcd (https endpoints), when a CA is given.
    pub tls: Option<StoreTls>,
}

/// TLS to etcd: the CA that signed the members' certificates, and a client certificate when
/// etcd asks for one (`--client-cert-auth`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreTls {
    pub ca: std::path::PathBuf,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

pub const DEFAULT_PREFIX: &str = "/switchyard/";
pub const DEFAULT_LEASE_TTL_SECONDS: u32 = 10;

/// Parses a `store` value: `embedded` (or empty) for the local store, `etcd://h:p[,h:p...]`.
/// `field` names the setting in errors.
pub fn parse_store(field: &str, value: &str) -> Result<Option<Vec<String>>, String> {
    let v = value.trim();
    if v.is_empty() || v == "embedded" {
        return Ok(None);
    }
    let Some(list) = v.strip_prefix("etcd://") else {
        return Err(format!(
            "{field}: {value:?} is not a store; use `embedded` or etcd://HOST:PORT[,HOST:PORT...]"
        ));
    };
    let mut out = Vec::new();
    for hp in list.split(',') {
        let hp = hp.trim().trim_end_matches('/');
        let ok = match hp.rsplit_once(':') {
            Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
            None => false,
        };
        if !ok {
            return Err(format!(
                "{field}: {hp:?} is not HOST:PORT (in {value:?}); use etcd://HOST:PORT[,HOST:PORT...]"
            ));
        }
        out.push(format!("http://{hp}"));
    }
    Ok(Some(out))
}

/// Checks a key prefix: absolute, ending with `/` (added when missing).
pub fn check_prefix(field: &str, value: &str) -> Result<String, String> {
    if !value.starts_with('/') || value.contains(char::is_whitespace) {
        return Err(format!(
            "{field}: {value:?} must start with `/` and contain no spaces (e.g. /switchyard/)"
        ));
    }
    Ok(if value.ends_with('/') {
        value.to_owned()
    } else {
        format!("{value}/")
    })
}

pub fn check_lease_ttl(field: &str, value: u64) -> Result<u32, String> {
    if !(2..=300).contains(&value) {
        return Err(format!(
            "{field}: {value} is out of range; give 2 to 300 seconds"
        ));
    }
    Ok(value as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_values_parse_or_name_the_bad_part() {
        assert_eq!(parse_store("--store", "embedded").unwrap(), None);
        assert_eq!(
            parse_store("--store", "etcd://127.0.0.1:2379,localhost:22379").unwrap(),
            Some(vec![
                "http://127.0.0.1:2379".to_string(),
                "http://localhost:22379".to_string()
            ])
        );
        let e = parse_store("--store", "etcd://127.0.0.1").unwrap_err();
        assert!(e.contains("--store") && e.contains("\"127.0.0.1\""), "{e}");
        let e = parse_store("server.store", "redis://x:1").unwrap_err();
        assert!(e.starts_with("server.store"), "{e}");
        assert_eq!(check_prefix("p", "/a").unwrap(), "/a/");
        assert!(check_prefix("p", "a/").is_err());
        assert!(check_lease_ttl("t", 1).is_err());
        assert_eq!(check_lease_ttl("t", 10).unwrap(), 10);
    }
}
