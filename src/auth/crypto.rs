//! The signature primitives `jsonwebtoken` uses, from `ring`: the crypto library the gateway already links (rustls, sessions).
//!
//! jsonwebtoken 10 leaves the choice to its user: `aws_lc_rs` (a second, C-built crypto library)
//! or `rust_crypto` (which pulls in the `rsa` crate, flagged by scanners for RUSTSEC-2023-0071,
//! and rand 0.8). This provider keeps one audited library for every algorithm pgsse accepts.

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::{digest, hmac, signature as sig};

/// Makes `ring` jsonwebtoken's provider for this process. Called before any use of
/// jsonwebtoken (key setup, minting, the demo); calling it again does nothing.
pub fn install() {
    static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: new_signer,
        verifier_factory: new_verifier,
        jwk_utils: JwkUtils {
            // Only `Jwk::from_encoding_key` needs these two; pgsse never builds JWKs.
            extract_rsa_public_key_components: |_| Err(ErrorKind::InvalidKeyFormat.into()),
            extract_ec_public_key_coordinates: |_, _| Err(ErrorKind::InvalidKeyFormat.into()),
            compute_digest,
        },
    };
    // Err only when already installed, which is this same provider.
    let _ = PROVIDER.install_default();
}

fn family(alg: Algorithm) -> AlgorithmFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => AlgorithmFamily::Rsa,
    }
}

fn hmac_alg(alg: Algorithm) -> hmac::Algorithm {
    match alg {
        Algorithm::HS384 => hmac::HMAC_SHA384,
        Algorithm::HS512 => hmac::HMAC_SHA512,
        _ => hmac::HMAC_SHA256,
    }
}

fn rsa_params(alg: Algorithm) -> &'static sig::RsaParameters {
    match alg {
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => &sig::RSA_PKCS1_2048_8192_SHA256,
    }
}

fn rsa_encoding(alg: Algorithm) -> &'static dyn sig::RsaEncoding {
    match alg {
        Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_SHA512,
        _ => &sig::RSA_PKCS1_SHA256,
    }
}

/// A key checked to be of the algorithm's family: an HMAC secret never verifies an RSA token.
struct Keyed<K> {
    alg: Algorithm,
    key: K,
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if key.family() != family(*alg) {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(Keyed { alg: *alg, key: key.clone() }))
}

impl Verifier<Vec<u8>> for Keyed<DecodingKey> {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let bytes = || match self.key.kind() {
            DecodingKeyKind::SecretOrDer(b) => b.as_slice(),
            DecodingKeyKind::RsaModulusExponent { .. } => &[],
        };
        let checked = match (self.alg, self.key.kind()) {
            (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, _) => {
                hmac::verify(&hmac::Key::new(hmac_alg(self.alg), bytes()), msg, signature)
            }
            (Algorithm::ES256, _) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, bytes()).verify(msg, signature)
            }
            (Algorithm::ES384, _) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P384_SHA384_FIXED, bytes()).verify(msg, signature)
            }
            (Algorithm::EdDSA, _) => sig::UnparsedPublicKey::new(&sig::ED25519, bytes()).verify(msg, signature),
            (_, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                sig::RsaPublicKeyComponents { n, e }.verify(rsa_params(self.alg), msg, signature)
            }
            (_, DecodingKeyKind::SecretOrDer(der)) => {
                sig::UnparsedPublicKey::new(rsa_params(self.alg), der).verify(msg, signature)
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Keyed<DecodingKey> {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// Signing keys, parsed once (signing is for `pgsse token` and the tests).
enum SigningKey {
    Hmac(hmac::Key),
    Rsa(sig::RsaKeyPair),
    Ecdsa(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if key.family() != family(*alg) {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let der = key.inner();
    let parsed = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => SigningKey::Hmac(hmac::Key::new(hmac_alg(*alg), der)),
        Algorithm::ES256 | Algorithm::ES384 => {
            let curve = if *alg == Algorithm::ES256 {
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let pair = sig::EcdsaKeyPair::from_pkcs8(curve, der, &SystemRandom::new());
            SigningKey::Ecdsa(pair.map_err(|_| ErrorKind::InvalidEcdsaKey)?)
        }
        Algorithm::EdDSA => {
            let pair = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der);
            SigningKey::Ed25519(pair.map_err(|_| ErrorKind::InvalidEddsaKey)?)
        }
        _ => {
            let pair = sig::RsaKeyPair::from_der(der).or_else(|_| sig::RsaKeyPair::from_pkcs8(der));
            SigningKey::Rsa(pair.map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?)
        }
    };
    Ok(Box::new(Keyed { alg: *alg, key: parsed }))
}

impl Signer<Vec<u8>> for Keyed<SigningKey> {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = SystemRandom::new();
        match &self.key {
            SigningKey::Hmac(k) => Ok(hmac::sign(k, msg).as_ref().to_vec()),
            SigningKey::Ecdsa(pair) => Ok(pair.sign(&rng, msg).map_err(|_| signature::Error::new())?.as_ref().to_vec()),
            SigningKey::Ed25519(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
            SigningKey::Rsa(pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(rsa_encoding(self.alg), &rng, msg, &mut out).map_err(|_| signature::Error::new())?;
                Ok(out)
            }
        }
    }
}

impl JwtSigner for Keyed<SigningKey> {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Vec<u8> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
    };
    digest::digest(alg, data).as_ref().to_vec()
}
