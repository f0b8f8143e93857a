//! Header rewriting between client and replica (RFC 9110 section 7.6.1).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded (besides those `Connection` lists).
/// `Trailer` is not one of them (RFC 9110 6.6.2): it announces trailer fields end to end, and
/// clients (and hyper's HTTP/2 server) go by it.
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

/// What the proxy tells a replica about the client. It is written into the request head as the
/// head is encoded ([`crate::proxy::upstream::codec::encode_head_into`]) rather than inserted
/// into the client's header map: three inserts and a lookup on every request cost more than the
/// name comparisons the encoder makes instead.
///
/// - `X-Forwarded-For`: every value the client sent, joined with `, `, then the client's address.
/// - `X-Forwarded-Proto`: replaced by the scheme the client used.
/// - `X-Forwarded-Host`: replaced by the Host the client asked for, when there is one.
/// - `Host`: that same Host, when the request has none left (an HTTP/2 request carries the
///   authority instead; `Connection: host` strips it).
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    pub peer: &'a HeaderValue,
    pub proto: &'static str,
    /// The `Host` header, or for HTTP/2 the URI authority, taken before stripping.
    pub host: Option<&'a HeaderValue>,
}

impl Forwarding<'_> {
    /// The client's headers that [`Forwarding::write`] replaces, so the encoder leaves them out.
    pub fn replaces(name: &HeaderName) -> bool {
        // Compared by length first: 15, 16 and 17 bytes.
        (15..=17).contains(&name.as_str().len())
            && (name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST)
    }

    /// Writes the header lines. `headers` is the client's map, for its `X-Forwarded-For`
    /// values; `has_host`: whether the encoder already wrote a `Host` line from it.
    pub fn write(&self, headers: &HeaderMap, prior_for: bool, has_host: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(b"x-forwarded-for: ");
        if prior_for {
            for v in headers.get_all(&X_FORWARDED_FOR) {
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(self.peer.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(host) = self.host {
            out.extend_from_slice(b"x-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
            out.extend_from_slice(b"\r\n");
            if !has_host {
                out.extend_from_slice(b"host: ");
                out.extend_from_slice(host.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
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
    fn forwarding_appends_to_every_forwarded_for_line_and_replaces_the_rest() {
        let peer = HeaderValue::from_static("10.1.1.1");
        let host = HeaderValue::from_static("a.example");
        let h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "gopher"),
        ]);
        assert!(h.keys().all(Forwarding::replaces));
        assert!(!Forwarding::replaces(&header::HOST));
        assert!(!Forwarding::replaces(&HeaderName::from_static(
            "x-forwarded-fox"
        )));
        let mut out = Vec::new();
        let fwd = Forwarding {
            peer: &peer,
            proto: "https",
            host: Some(&host),
        };
        fwd.write(&h, true, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x-forwarded-for: 1.2.3.4, 5.6.7.8, 10.1.1.1\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: a.example\r\n"
        );
        let mut out = Vec::new();
        let fwd = Forwarding { host: None, ..fwd };
        fwd.write(&HeaderMap::new(), false, false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x-forwarded-for: 10.1.1.1\r\nx-forwarded-proto: https\r\n"
        );
        let mut out = Vec::new();
        let fwd = Forwarding {
            host: Some(&host),
            ..fwd
        };
        fwd.write(&HeaderMap::new(), false, false, &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("host: a.example\r\n"));
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
