//! Verification keys from every configured source, which algorithms each may verify, and kid selection.

use jsonwebtoken::{Algorithm, DecodingKey};

use super::error::{sanitize, AuthError, Setting, SetupError};

pub(crate) const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// Exact match, as RFC 7515 requires for the `alg` header (so `none` is never found).
pub(crate) fn algorithm_from_token(name: &str) -> Option<Algorithm> {
    ALGORITHMS.into_iter().find(|alg| alg_name(*alg) == name)
}

/// Case-insensitive, for operator convenience (`--jwt-algorithms rs256`).
fn algorithm_from_config(name: &str) -> Option<Algorithm> {
    ALGORITHMS.into_iter().find(|alg| alg_name(*alg).eq_ignore_ascii_case(name))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// The algorithm family must match the key type. This is what stops a
    /// public key from ever being used as an HMAC secret (key confusion).
    pub(crate) fn supports(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (Self::Hmac, HS256 | HS384 | HS512)
                | (Self::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (Self::EcP256, ES256)
                | (Self::EcP384, ES384)
                | (Self::Ed25519, EdDSA)
        )
    }
}

pub(crate) struct VerifyKey {
    pub kind: KeyKind,
    /// Set only for JWKS keys.
    pub kid: Option<String>,
    /// The JWK `alg` parameter, when the key restricts itself to one algorithm.
    pub only_alg: Option<Algorithm>,
    pub from_jwks: bool,
    pub key: DecodingKey,
}

impl VerifyKey {
    pub(crate) fn new(kind: KeyKind, key: DecodingKey) -> Self {
        Self { kind, kid: None, only_alg: None, from_jwks: false, key }
    }

    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.supports(alg) && self.only_alg.is_none_or(|only| only == alg)
    }
}

pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    pub(crate) fn from_keys(keys: Vec<VerifyKey>) -> KeySet {
        KeySet { keys }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    fn supports(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|k| k.accepts(alg))
    }

    /// Keys that may verify a token signed with `alg` and carrying `kid`. A kid
    /// found in the JWKS pins that key; keys without a kid (the secret, PEM
    /// files) serve tokens whose kid is absent or not in the JWKS. A JWKS
    /// holding a single key also serves tokens without a kid.
    pub(crate) fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<&VerifyKey>, AuthError> {
        let jwks = || self.keys.iter().filter(|k| k.from_jwks);
        if let Some(kid) = kid {
            // Duplicate kids are rejected at load time, so there is at most one.
            if let Some(named) = jwks().find(|k| k.kid.as_deref() == Some(kid)) {
                if !named.accepts(alg) {
                    let kid = sanitize(kid, 64);
                    return Err(AuthError::KeyAlgorithmMismatch { kid, alg: alg_name(alg) });
                }
                return Ok(vec![named]);
            }
        }
        let mut found: Vec<&VerifyKey> = self.keys.iter().filter(|k| !k.from_jwks && k.accepts(alg)).collect();
        if kid.is_none() {
            let mut set = jwks();
            if let (Some(only), None) = (set.next(), set.next()) {
                if only.accepts(alg) {
                    found.push(only);
                }
            }
        }
        if found.is_empty() {
            return Err(AuthError::UnknownKey { kid: kid.map(|kid| sanitize(kid, 64)), alg: alg_name(alg) });
        }
        Ok(found)
    }
}

/// The effective allow-list. Names may also arrive comma-separated in one entry.
/// `check_keys` is false when key loading already failed, so that a broken key
/// file does not also produce "RS256 has no key".
pub(crate) fn allowed_algorithms(
    names: &[String],
    keys: &KeySet,
    remote: bool,
    check_keys: bool,
    errors: &mut Vec<SetupError>,
) -> Vec<Algorithm> {
    // A JWKS URL can serve any asymmetric key; which ones is only known at run time.
    let fits = |alg: Algorithm| keys.supports(alg) || (remote && !KeyKind::Hmac.supports(alg));
    let names = names.iter().flat_map(|n| n.split([',', ' '])).filter(|n| !n.is_empty());
    let mut allowed = Vec::new();
    for name in names {
        match algorithm_from_config(name) {
            None => {
                let known: Vec<_> = ALGORITHMS.into_iter().map(alg_name).collect();
                errors.push(SetupError::new(
                    Setting::Algorithms,
                    format!("unknown algorithm {name:?}; expected one of {}", known.join(", ")),
                ));
            }
            Some(alg) if allowed.contains(&alg) => {}
            Some(alg) => {
                if check_keys && !fits(alg) {
                    errors.push(SetupError::new(
                        Setting::Algorithms,
                        format!("{} needs {}, and none is configured", alg_name(alg), needed_key(alg)),
                    ));
                }
                allowed.push(alg);
            }
        }
    }
    if allowed.is_empty() {
        allowed = ALGORITHMS.into_iter().filter(|alg| fits(*alg)).collect();
    }
    allowed
}

fn needed_key(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "--jwt-secret",
        Algorithm::ES256 => "a P-256 key (--jwt-public-key-file or --jwks-file)",
        Algorithm::ES384 => "a P-384 key (--jwt-public-key-file or --jwks-file)",
        Algorithm::EdDSA => "an Ed25519 key (--jwt-public-key-file or --jwks-file)",
        _ => "an RSA key (--jwt-public-key-file or --jwks-file)",
    }
}
