//! Public-key PEM loading: tells RSA, EC P-256/P-384 and Ed25519 keys apart by their DER contents.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::DecodingKey;

use super::keys::KeyKind;

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;

// DER contents of the object identifiers we recognise.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Parses a file holding exactly one public key (`PUBLIC KEY` or `RSA PUBLIC KEY`).
pub(crate) fn load_public_key(text: &str) -> Result<(KeyKind, DecodingKey), String> {
    let blocks = pem_blocks(text)?;
    let (label, der) = match blocks.as_slice() {
        [one] => one,
        [] => return Err("no PEM block found (expected -----BEGIN PUBLIC KEY-----)".into()),
        more => return Err(format!("{} PEM blocks found; give one key per file", more.len())),
    };
    match label.as_str() {
        "PUBLIC KEY" => from_spki(der),
        "RSA PUBLIC KEY" => {
            check_rsa_public_key(der)?;
            Ok((KeyKind::Rsa, DecodingKey::from_rsa_der(der)))
        }
        "CERTIFICATE" => Err("certificates are not supported; extract the key with \
             `openssl x509 -in CERT -pubkey -noout`"
            .into()),
        l if l.contains("PRIVATE KEY") => Err("this is a private key; configure the public key \
             (`openssl pkey -in KEY -pubout`)"
            .into()),
        other => Err(format!("unsupported PEM block {other:?}")),
    }
}

/// `(label, DER)` for each `-----BEGIN label-----` ... `-----END label-----` block.
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue; // text outside blocks, e.g. `openssl -text` output, is allowed
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            body.push_str(line);
        }
        if !closed {
            return Err(format!("PEM block {label:?} has no END line"));
        }
        let der = STANDARD.decode(body).map_err(|_| format!("PEM block {label:?} is not base64"))?;
        blocks.push((label.to_owned(), der));
    }
    Ok(blocks)
}

/// `SubjectPublicKeyInfo ::= SEQUENCE { SEQUENCE { OID, params }, BIT STRING }`
fn from_spki(der: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    let mut spki = Der::new(Der::new(der).next(SEQUENCE)?);
    let mut algorithm = Der::new(spki.next(SEQUENCE)?);
    let oid = algorithm.next(OID)?;
    let key = match spki.next(BIT_STRING)? {
        [0, key @ ..] => key,
        _ => return Err(INVALID_DER.into()),
    };
    match oid {
        RSA_ENCRYPTION => {
            check_rsa_public_key(key)?;
            Ok((KeyKind::Rsa, DecodingKey::from_rsa_der(key)))
        }
        EC_PUBLIC_KEY => {
            let kind = match algorithm.next(OID)? {
                P256 => KeyKind::EcP256,
                P384 => KeyKind::EcP384,
                _ => return Err("unsupported EC curve; P-256 (ES256) and P-384 (ES384) work".into()),
            };
            check_ec_point(kind, key)?;
            // jsonwebtoken/ring take the raw uncompressed point here, despite the name.
            Ok((kind, DecodingKey::from_ec_der(key)))
        }
        ED25519 => match key.len() {
            32 => Ok((KeyKind::Ed25519, DecodingKey::from_ed_der(key))),
            _ => Err("Ed25519 public key must be 32 bytes".into()),
        },
        RSASSA_PSS => Err("RSASSA-PSS-only keys are not supported; export an rsaEncryption key \
             (it works for PS256 too)"
            .into()),
        _ => Err("unsupported key type; expected RSA, EC P-256/P-384 or Ed25519".into()),
    }
}

/// PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`
fn check_rsa_public_key(der: &[u8]) -> Result<(), String> {
    let mut fields = Der::new(Der::new(der).next(SEQUENCE)?);
    let modulus = fields.next(INTEGER)?;
    let exponent = fields.next(INTEGER)?;
    if exponent.is_empty() {
        return Err(INVALID_DER.into());
    }
    check_rsa_modulus(modulus)
}

/// ring verifies only 2048 to 8192-bit RSA keys; say so at startup rather than
/// failing every signature later.
pub(crate) fn check_rsa_modulus(modulus: &[u8]) -> Result<(), String> {
    let start = modulus.iter().position(|b| *b != 0).unwrap_or(modulus.len());
    let significant = modulus.get(start..).unwrap_or_default();
    let bits = significant.first().map_or(0, |first| significant.len() * 8 - first.leading_zeros() as usize);
    if !(2048..=8192).contains(&bits) {
        return Err(format!("RSA key is {bits} bits; 2048 to 8192 bits are supported"));
    }
    Ok(())
}

/// ring accepts uncompressed points only: `0x04 || x || y`.
pub(crate) fn check_ec_point(kind: KeyKind, point: &[u8]) -> Result<(), String> {
    let (len, curve) = match kind {
        KeyKind::EcP384 => (97, "P-384"),
        _ => (65, "P-256"),
    };
    if point.len() != len || point.first() != Some(&0x04) {
        return Err(format!("EC public key is not an uncompressed {curve} point"));
    }
    Ok(())
}

const INVALID_DER: &str = "invalid DER in public key";

/// Just enough DER to walk a public key: definite lengths, expected tags only.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }

    /// The contents of the next element, which must have tag `tag`.
    fn next(&mut self, tag: u8) -> Result<&'a [u8], String> {
        self.read(tag).ok_or_else(|| INVALID_DER.to_owned())
    }

    fn read(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (&actual, rest) = self.rest.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        if actual != tag {
            return None;
        }
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let (len_bytes, after) = rest.split_at_checked(count)?;
            rest = after;
            len_bytes.iter().fold(0, |len, b| (len << 8) | usize::from(*b))
        };
        let (contents, after) = rest.split_at_checked(len)?;
        self.rest = after;
        Some(contents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = include_str!("../../tests/fixtures/keys/rsa_public.pem");
    const RSA_PKCS1: &str = include_str!("../../tests/fixtures/keys/rsa_public_pkcs1.pem");
    const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/keys/rsa_private.pem");
    const EC256: &str = include_str!("../../tests/fixtures/keys/ec256_public.pem");
    const EC384: &str = include_str!("../../tests/fixtures/keys/ec384_public.pem");
    const ED25519_KEY: &str = include_str!("../../tests/fixtures/keys/ed25519_public.pem");

    fn kind(text: &str) -> Result<KeyKind, String> {
        load_public_key(text).map(|(kind, _)| kind)
    }

    #[test]
    fn detects_key_type_from_contents() {
        assert_eq!(kind(RSA), Ok(KeyKind::Rsa));
        assert_eq!(kind(RSA_PKCS1), Ok(KeyKind::Rsa));
        assert_eq!(kind(EC256), Ok(KeyKind::EcP256));
        assert_eq!(kind(EC384), Ok(KeyKind::EcP384));
        assert_eq!(kind(ED25519_KEY), Ok(KeyKind::Ed25519));
        let with_noise = format!("Subject: test\r\n{}", RSA.replace('\n', "\r\n"));
        assert_eq!(kind(&with_noise), Ok(KeyKind::Rsa));
    }

    #[test]
    fn rejects_bad_pem_with_reasons() {
        let err = |text: &str| kind(text).unwrap_err();
        assert!(err(RSA_PRIVATE).contains("private key"));
        assert!(err("hello").contains("no PEM block"));
        assert!(err(&format!("{RSA}{EC256}")).contains("2 PEM blocks"));
        assert!(err(&RSA.replace("-----END PUBLIC KEY-----", "")).contains("no END line"));
        assert!(err(&RSA.replacen("MII", "M!I", 1)).contains("not base64"));
        let truncated =
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n";
        assert_eq!(err(truncated), INVALID_DER);
        assert!(err("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----").contains("x509"));
    }

    #[test]
    fn rsa_modulus_size_is_checked() {
        let mut modulus = vec![0u8; 257];
        modulus[1] = 0x80;
        assert!(check_rsa_modulus(&modulus).is_ok());
        assert!(check_rsa_modulus(&[0xff; 255]).unwrap_err().contains("2040 bits"));
        assert!(check_rsa_modulus(&[]).is_err());
    }
}
