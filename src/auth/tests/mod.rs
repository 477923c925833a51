//! End-to-end tests: keys from `tests/fixtures/keys`, tokens signed by `jsonwebtoken`.

mod requests;
mod signing;

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::header::{HeaderValue, AUTHORIZATION, COOKIE};
use jsonwebtoken::{encode, EncodingKey, Header};
use rand::{rngs::StdRng, RngExt, SeedableRng};
use serde_json::{json, Value};

use super::*;
use crate::clock::unix_now;
use hyper::HeaderMap;
use jsonwebtoken::Algorithm;

const RSA_PUBLIC_PEM: &[u8] = include_bytes!("../../../tests/fixtures/keys/rsa_public.pem");
const SECRET: &str = "a-test-secret-that-is-32-bytes-long";

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(name)
}

fn with_secret() -> JwtConfig {
    JwtConfig { jwt_secret: Some(SECRET.into()), ..JwtConfig::default() }
}

fn with_files(names: &[&str]) -> JwtConfig {
    JwtConfig { jwt_public_key_files: names.iter().map(|n| path(n)).collect(), ..JwtConfig::default() }
}

fn with_jwks(name: &str) -> JwtConfig {
    JwtConfig { jwks_file: Some(path(name)), ..JwtConfig::default() }
}

fn auth(cfg: &JwtConfig) -> JwtVerifier {
    JwtVerifier::new(cfg).unwrap()
}

fn setup_errors(cfg: &JwtConfig) -> Vec<SetupError> {
    JwtVerifier::new(cfg).unwrap_err()
}

fn claims() -> Value {
    json!({"sub": "alice", "exp": unix_now() + 600})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let header = Header { kid: kid.map(str::to_owned), ..Header::new(alg) };
    crate::auth::install_crypto();
    encode(&header, claims, key).unwrap()
}

fn hmac() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("../../../tests/fixtures/keys/rsa_private.pem")).unwrap()
}

fn ec256() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("../../../tests/fixtures/keys/ec256_private.pem")).unwrap()
}

fn ec384() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("../../../tests/fixtures/keys/ec384_private.pem")).unwrap()
}

fn ed25519() -> EncodingKey {
    EncodingKey::from_ed_pem(include_bytes!("../../../tests/fixtures/keys/ed25519_private.pem")).unwrap()
}

fn code(result: Result<Identity, AuthError>) -> &'static str {
    result.unwrap_err().code()
}

/// A token with an arbitrary header and no real signature.
fn unsigned(header: Value, signature: &str) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{signature}", part(&header), part(&claims()))
}

#[test]
fn authenticator_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<JwtVerifier>();
    let cfg = with_secret();
    assert!(!format!("{cfg:?}{:?}", auth(&cfg)).contains(SECRET));
}
