//! JWK set loading: RSA, EC P-256/P-384 and Ed25519 signature keys, chosen per token by `kid`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::Value;

use super::keys::{algorithm_from_token, KeyKind, VerifyKey};
use super::pem::{check_ec_point, check_rsa_modulus};

pub(crate) struct Loaded {
    pub keys: Vec<VerifyKey>,
    /// Keys that are fine but not for us (encryption keys, other curves), with the reason.
    pub skipped: Vec<String>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

enum Reject {
    /// Not a signature key we can use: warn and carry on.
    Skip(String),
    /// Claims to be usable but is broken: a configuration error.
    Invalid(String),
}

pub(crate) fn load(text: &str) -> Result<Loaded, String> {
    let set: RawSet = serde_json::from_str(text).map_err(|e| format!("not a JWK set ({{\"keys\": [...]}}): {e}"))?;
    let mut loaded = Loaded { keys: Vec::new(), skipped: Vec::new() };
    let mut problems = Vec::new();
    for (index, value) in set.keys.iter().enumerate() {
        let label = match value.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("key {kid:?}"),
            None => format!("key #{index}"),
        };
        match parse_key(value) {
            Ok(key) if key.kid.is_some() && loaded.keys.iter().any(|k| k.kid == key.kid) => {
                problems.push(format!("{label}: duplicate kid"));
            }
            Ok(key) => loaded.keys.push(key),
            Err(Reject::Skip(why)) => loaded.skipped.push(format!("{label}: {why}")),
            Err(Reject::Invalid(why)) => problems.push(format!("{label}: {why}")),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    if loaded.keys.is_empty() {
        let mut msg = "no usable signature keys".to_owned();
        if !loaded.skipped.is_empty() {
            msg = format!("{msg} (skipped {})", loaded.skipped.join("; "));
        }
        return Err(msg);
    }
    Ok(loaded)
}

fn parse_key(value: &Value) -> Result<VerifyKey, Reject> {
    let jwk = RawJwk::deserialize(value).map_err(|e| Reject::Invalid(format!("not a JWK: {e}")))?;
    if let Some(usage) = jwk.usage.as_deref().filter(|u| *u != "sig") {
        return Err(Reject::Skip(format!("use is {usage:?}, not \"sig\"")));
    }
    if jwk.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|op| op == "verify")) {
        return Err(Reject::Skip("key_ops does not include \"verify\"".into()));
    }
    let (kind, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => (KeyKind::Rsa, rsa_key(&jwk)?),
        ("EC", Some("P-256")) => (KeyKind::EcP256, ec_key(&jwk, KeyKind::EcP256, 32)?),
        ("EC", Some("P-384")) => (KeyKind::EcP384, ec_key(&jwk, KeyKind::EcP384, 48)?),
        ("OKP", Some("Ed25519")) => {
            let x = field(&jwk.x, "x", Some(32))?;
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
        }
        // A public key set is the wrong place for a shared secret.
        ("oct", _) => return Err(Reject::Skip("symmetric key; use --jwt-secret instead".into())),
        ("EC" | "OKP", crv) => return Err(Reject::Skip(format!("unsupported curve {crv:?}"))),
        (kty, _) => return Err(Reject::Skip(format!("unsupported kty {kty:?}"))),
    };
    let only_alg = match jwk.alg.as_deref() {
        None => None,
        Some(name) => match algorithm_from_token(name) {
            Some(alg) if kind.supports(alg) => Some(alg),
            _ => return Err(Reject::Skip(format!("alg {name:?} does not fit this key"))),
        },
    };
    Ok(VerifyKey { kind, kid: jwk.kid, only_alg, from_jwks: true, key })
}

fn rsa_key(jwk: &RawJwk) -> Result<DecodingKey, Reject> {
    let n = field(&jwk.n, "n", None)?;
    let e = field(&jwk.e, "e", None)?;
    check_rsa_modulus(&n).map_err(Reject::Invalid)?;
    if e.is_empty() {
        return Err(Reject::Invalid("empty RSA exponent".into()));
    }
    Ok(DecodingKey::from_rsa_raw_components(&n, &e))
}

fn ec_key(jwk: &RawJwk, kind: KeyKind, size: usize) -> Result<DecodingKey, Reject> {
    let mut point = vec![0x04];
    point.extend(field(&jwk.x, "x", Some(size))?);
    point.extend(field(&jwk.y, "y", Some(size))?);
    check_ec_point(kind, &point).map_err(Reject::Invalid)?;
    Ok(DecodingKey::from_ec_der(&point))
}

/// A base64url key member, optionally of an exact decoded length.
fn field(value: &Option<String>, name: &str, len: Option<usize>) -> Result<Vec<u8>, Reject> {
    let value = value.as_deref().ok_or_else(|| Reject::Invalid(format!("missing {name:?}")))?;
    // RFC 7518 forbids padding, but some generators add it; it changes nothing.
    let bytes = URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| Reject::Invalid(format!("{name:?} is not base64url")))?;
    match len {
        Some(len) if bytes.len() != len => {
            Err(Reject::Invalid(format!("{name:?} must be {len} bytes, not {}", bytes.len())))
        }
        _ => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JWKS: &str = include_str!("../../tests/fixtures/keys/jwks.json");

    #[test]
    fn loads_fixture_and_skips_encryption_key() {
        let loaded = load(JWKS).unwrap();
        let kids: Vec<_> = loaded.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["rsa-1", "ec-1", "ec384-1", "ed-1"]);
        assert_eq!(loaded.skipped.len(), 1);
        assert!(loaded.skipped[0].contains("enc-1"));
        assert_eq!(loaded.keys[0].only_alg, Some(jsonwebtoken::Algorithm::RS256));
    }

    #[test]
    fn reports_broken_sets() {
        let load = |text: &str| load(text).map(|loaded| loaded.keys.len());
        let set = |keys: Value| load(&json!({ "keys": keys }).to_string());
        assert!(load("[]").unwrap_err().contains("not a JWK set"));
        assert!(set(json!([])).unwrap_err().contains("no usable"));
        let only_oct = set(json!([{"kty": "oct", "k": "c2VjcmV0"}])).unwrap_err();
        assert!(only_oct.contains("no usable") && only_oct.contains("--jwt-secret"), "{only_oct}");
        let short = set(json!([{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}])).unwrap_err();
        assert!(short.contains("must be 32 bytes"), "{short}");
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": URL_SAFE_NO_PAD.encode([1; 32])});
        assert!(set(json!([ed, ed])).unwrap_err().contains("duplicate kid"));
        let mut wrong_alg = ed.clone();
        wrong_alg["alg"] = json!("RS256");
        assert!(set(json!([wrong_alg])).unwrap_err().contains("does not fit"));
        let no_n = set(json!([{"kty": "RSA", "e": "AQAB"}])).unwrap_err();
        assert!(no_n.contains("missing \"n\""), "{no_n}");
    }
}
