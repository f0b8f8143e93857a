//! API keys: `Authorization: Api-Key <key>` or `Authorization: Bearer <key>`, compared in
//! constant time.

use http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// Where the key comes from: `SWITCHYARD_API_KEY`, the config, or generated at start.
pub fn generate() -> String {
    let bytes: [u8; 20] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `Err` carries the message for the 401.
pub fn check(key: &str, headers: &HeaderMap) -> Result<(), &'static str> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Api-Key ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .map(str::trim);
    match given {
        // Constant time: how much of a guess matched must not show in the answer's timing.
        Some(g) if bool::from(g.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
        Some(_) => Err("wrong API key"),
        None => Err("missing API key: send `Authorization: Api-Key <key>` (the key is SWITCHYARD_API_KEY, or the one switchyard printed at start)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_schemes_and_rejects_others() {
        let mut h = HeaderMap::new();
        assert!(check("k1", &h).is_err());
        h.insert(header::AUTHORIZATION, "Api-Key k1".parse().unwrap());
        assert!(check("k1", &h).is_ok());
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert!(check("k1", &h).is_ok());
        h.insert(header::AUTHORIZATION, "Bearer k2".parse().unwrap());
        assert_eq!(check("k1", &h).unwrap_err(), "wrong API key");
        h.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert!(check("k1", &h).is_err());
        h.insert(header::AUTHORIZATION, "Api-Key k10".parse().unwrap());
        assert!(
            check("k1", &h).is_err(),
            "a longer key with the right prefix"
        );
        assert_eq!(generate().len(), 40);
    }
}
