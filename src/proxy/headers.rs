//! Header rewriting between client and replica (RFC 9110 section 7.6.1).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded (besides those `Connection` lists).
/// `Trailer` is not one of them (RFC 9110 6.6.2): it announces trailer fields end to end, and
/// hyper sends trailers to an HTTP/1.1 client only when the response carries it.
/// `Connection` comes first: [`strip_hop_by_hop`] relies on it.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
];
/// The lengths of those names and `proxy-connection`, as bits: most names are ruled out by
/// their length alone.
const HOP_BY_HOP_LENGTHS: u32 = 1 << 2 | 1 << 7 | 1 << 10 | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 19;
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_SWITCHYARD_DEPLOYMENT: HeaderName = HeaderName::from_static("x-switchyard-deployment");

/// True when the message asks to switch protocols (`Connection: upgrade` plus `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_lists(headers, "upgrade")
}

/// True for the names that are hop-by-hop whatever `Connection` lists: the fixed set and
/// `Proxy-Connection`.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    let len = name.as_str().len();
    len < 32
        && HOP_BY_HOP_LENGTHS & (1 << len) != 0
        && (HOP_BY_HOP.contains(name) || name == PROXY_CONNECTION)
}

/// The names one `Connection` line lists, trimmed, as [`strip_hop_by_hop`] reads them: none
/// from a line that is not visible ASCII (`HeaderValue::to_str`'s rule).
pub fn connection_tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let readable = line
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
    line.split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(move |t| readable && !t.is_empty())
}

fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers: every name listed on any `Connection` line, then the fixed set.
/// With `keep_upgrade`, `Upgrade` is kept and `Connection` is reduced to `upgrade`, so a
/// protocol switch can pass through.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names present, noting which fixed ones occur: most messages carry none
    // or only `Connection`, and a removal (a hash and a probe) for each of the eight names
    // showed up in profiles of every request.
    let mut present = 0u16;
    for k in headers.keys() {
        let len = k.as_str().len();
        if len >= 32 || HOP_BY_HOP_LENGTHS & (1 << len) == 0 {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == PROXY_CONNECTION {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present & 1 != 0 {
        // `Connection` (index 0) is present: remove every name it lists, on every line.
        // Removing by `&str` allocates nothing; the values are cloned (a reference count)
        // because they live in the map being changed.
        let mut lines = headers.get_all(header::CONNECTION).iter();
        let first = lines.next().cloned();
        let more: Vec<HeaderValue> = lines.cloned().collect();
        for line in first.iter().chain(more.iter()) {
            let Ok(line) = line.to_str() else { continue };
            for token in line.split(',').map(str::trim) {
                let kept = keep_upgrade && token.eq_ignore_ascii_case("upgrade");
                if !kept && !token.is_empty() {
                    headers.remove(token);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 && !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Appends the client address to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (the Host the client asked for).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    // Room for the three at once: a request map sized for the client's few headers would
    // otherwise grow (and reallocate) on the way.
    headers.reserve(3);
    let chained = headers.get(&X_FORWARDED_FOR).and_then(|prev| {
        let mut v = Vec::with_capacity(prev.len() + 2 + peer.len());
        v.extend_from_slice(prev.as_bytes());
        v.extend_from_slice(b", ");
        v.extend_from_slice(peer.as_bytes());
        HeaderValue::from_bytes(&v).ok()
    });
    headers.insert(&X_FORWARDED_FOR, chained.unwrap_or_else(|| peer.clone()));
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(h) = host {
        headers.insert(&X_FORWARDED_HOST, h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn strips_every_connection_line_and_the_names_it_lists() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("Connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn upgrade_requests_keep_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, x-a"),
            ("upgrade", "websocket"),
            ("x-a", "1"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(h.get("x-a").is_none());
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let peer = HeaderValue::from_static("10.1.1.1");
        let mut h = map(&[("x-forwarded-for", "1.2.3.4")]);
        add_forwarded(
            &mut h,
            &peer,
            "https",
            Some(HeaderValue::from_static("a.example")),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.2.3.4, 10.1.1.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "a.example");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &peer, "http", None);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.1.1");
    }

    /// The length prefilter is written out by hand: a name added to the list without its
    /// length would silently never be stripped.
    #[test]
    fn the_length_prefilter_covers_every_hop_by_hop_name() {
        let derived = HOP_BY_HOP
            .iter()
            .chain([&PROXY_CONNECTION])
            .fold(0u32, |bits, name| bits | 1 << name.as_str().len());
        assert_eq!(HOP_BY_HOP_LENGTHS, derived);
    }
}
