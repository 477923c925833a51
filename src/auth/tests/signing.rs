//! Key types, key selection, algorithm rules and setup errors.

use super::*;

#[test]
fn hmac_algorithms_verify() {
    let a = auth(&with_secret());
    let claims = claims();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let id = a.verify(&sign(alg, &hmac(), None, &claims)).unwrap();
        assert_eq!(id, Identity { user_id: "alice".into(), expires_at: claims["exp"].as_u64(), session: None });
    }
}

#[test]
fn rsa_pem_keys_verify_rs_and_ps() {
    let a = auth(&with_files(&["rsa_public.pem"]));
    use Algorithm::*;
    for alg in [RS256, RS384, RS512, PS256, PS384, PS512] {
        assert_eq!(&*a.verify(&sign(alg, &rsa(), None, &claims())).unwrap().user_id, "alice");
    }
    let pkcs1 = auth(&with_files(&["rsa_public_pkcs1.pem"]));
    assert!(pkcs1.verify(&sign(RS256, &rsa(), None, &claims())).is_ok());
}

#[test]
fn ec_and_ed25519_pem_keys_verify() {
    let a = auth(&with_files(&["ec256_public.pem", "ec384_public.pem", "ed25519_public.pem"]));
    assert!(a.verify(&sign(Algorithm::ES256, &ec256(), None, &claims())).is_ok());
    assert!(a.verify(&sign(Algorithm::ES384, &ec384(), None, &claims())).is_ok());
    assert!(a.verify(&sign(Algorithm::EdDSA, &ed25519(), None, &claims())).is_ok());
    // The curve decides the algorithm: a P-384 key does not make ES256 acceptable.
    let p384_only = auth(&with_files(&["ec384_public.pem"]));
    let es256 = sign(Algorithm::ES256, &ec256(), None, &claims());
    assert_eq!(code(p384_only.verify(&es256)), "algorithm_not_allowed");
}

#[test]
fn jwks_key_is_chosen_by_kid() {
    let a = auth(&with_jwks("jwks.json"));
    let c = claims();
    assert!(a.verify(&sign(Algorithm::RS256, &rsa(), Some("rsa-1"), &c)).is_ok());
    assert!(a.verify(&sign(Algorithm::ES256, &ec256(), Some("ec-1"), &c)).is_ok());
    assert!(a.verify(&sign(Algorithm::ES384, &ec384(), Some("ec384-1"), &c)).is_ok());
    assert!(a.verify(&sign(Algorithm::EdDSA, &ed25519(), Some("ed-1"), &c)).is_ok());

    assert_eq!(code(a.verify(&sign(Algorithm::ES256, &ec256(), Some("nope"), &c))), "unknown_key");
    // Skipped encryption key, and several keys but no kid in the token.
    assert_eq!(code(a.verify(&sign(Algorithm::RS256, &rsa(), Some("enc-1"), &c))), "unknown_key");
    assert_eq!(code(a.verify(&sign(Algorithm::ES256, &ec256(), None, &c))), "unknown_key");
    // The only RSA key is pinned to RS256 by its `alg`, so PS256 is not even allowed.
    let ps256 = sign(Algorithm::PS256, &rsa(), Some("rsa-1"), &c);
    assert_eq!(code(a.verify(&ps256)), "algorithm_not_allowed");
    let rs256 = sign(Algorithm::RS256, &rsa(), Some("ec-1"), &c);
    assert_eq!(code(a.verify(&rs256)), "key_algorithm_mismatch");
    let es256 = sign(Algorithm::ES256, &ec256(), Some("ed-1"), &c);
    assert_eq!(code(a.verify(&es256)), "key_algorithm_mismatch");
    // Right kid, wrong private key.
    let forged = sign(Algorithm::ES384, &ec384(), Some("ec-1"), &c);
    assert_eq!(code(a.verify(&forged)), "key_algorithm_mismatch");
    let err = a.verify(&sign(Algorithm::ES256, &ec256(), Some("ec384-1"), &c)).unwrap_err();
    assert_eq!(err.to_string(), "key \"ec384-1\" cannot verify ES256 tokens");
}

#[test]
fn single_key_jwks_serves_tokens_without_kid() {
    let a = auth(&with_jwks("jwks_single.json"));
    assert!(a.verify(&sign(Algorithm::ES256, &ec256(), None, &claims())).is_ok());
    assert!(a.verify(&sign(Algorithm::ES256, &ec256(), Some("only"), &claims())).is_ok());
    assert_eq!(code(a.verify(&sign(Algorithm::ES256, &ec256(), Some("x"), &claims()))), "unknown_key");
}

#[test]
fn unknown_kid_falls_back_to_keys_without_kid() {
    let a = auth(&JwtConfig { jwt_secret: Some(SECRET.into()), ..with_jwks("jwks.json") });
    assert!(a.verify(&sign(Algorithm::HS256, &hmac(), Some("session"), &claims())).is_ok());
}

#[test]
fn rejects_alg_none() {
    let a = auth(&with_secret());
    for alg in ["none", "None", "NONE", ""] {
        let token = unsigned(json!({"alg": alg, "typ": "JWT"}), "");
        assert_eq!(code(a.verify(&token)), "algorithm_not_allowed", "{alg:?}");
    }
    let two_segments = unsigned(json!({"alg": "none"}), "");
    assert_eq!(code(a.verify(two_segments.trim_end_matches('.'))), "malformed_token");
    let cfg = JwtConfig { algorithms: vec!["none".into()], ..with_secret() };
    assert_eq!(setup_errors(&cfg)[0].setting, Setting::Algorithms);
}

#[test]
fn public_key_is_never_an_hmac_secret() {
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC_PEM), None, &claims());
    let rsa_only = auth(&with_files(&["rsa_public.pem"]));
    let err = rsa_only.verify(&confused).unwrap_err();
    assert_eq!(err.code(), "algorithm_not_allowed");
    assert_eq!(err.to_string(), "algorithm HS256 is not allowed (allowed: RS256, RS384, RS512, PS256, PS384, PS512)");
    // Forcing HS256 onto the allow-list without a secret is a setup error.
    let forced = JwtConfig { algorithms: vec!["RS256".into(), "HS256".into()], ..with_files(&["rsa_public.pem"]) };
    let errors = setup_errors(&forced);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("HS256 needs --jwt-secret"), "{}", errors[0]);
    // With a secret as well, HS256 is checked against the secret only.
    let both = auth(&JwtConfig { jwt_secret: Some(SECRET.into()), ..with_files(&["rsa_public.pem"]) });
    assert_eq!(code(both.verify(&confused)), "invalid_signature");
}

#[test]
fn algorithm_must_be_on_allow_list() {
    let cfg = JwtConfig { algorithms: vec!["rs256".into()], ..with_files(&["rsa_public.pem"]) };
    let a = auth(&JwtConfig { jwt_secret: Some(SECRET.into()), ..cfg });
    assert!(a.verify(&sign(Algorithm::RS256, &rsa(), None, &claims())).is_ok());
    let err = a.verify(&sign(Algorithm::HS256, &hmac(), None, &claims())).unwrap_err();
    assert_eq!(err.to_string(), "algorithm HS256 is not allowed (allowed: RS256)");
    assert_eq!(code(a.verify(&sign(Algorithm::PS256, &rsa(), None, &claims()))), "algorithm_not_allowed");
}

#[test]
fn setup_errors_are_collected() {
    let cfg = JwtConfig {
        jwt_public_key_files: vec![path("missing.pem"), path("jwks.json")],
        algorithms: vec!["HS256".into(), "HS999".into()],
        ..with_secret()
    };
    let errors = setup_errors(&cfg);
    let settings: Vec<_> = errors.iter().map(|e| e.setting).collect();
    assert_eq!(settings, [Setting::PublicKeyFile, Setting::PublicKeyFile, Setting::Algorithms], "{errors:?}");
    assert!(errors[0].message.contains("missing.pem: cannot read"));
    assert!(errors[1].message.contains("no PEM block"));
    assert!(errors[2].message.contains("\"HS999\""));

    let none = setup_errors(&JwtConfig::default());
    assert!(none[0].message.contains("no verification key"), "{}", none[0]);
    let many = JwtConfig {
        jwt_secret: Some(String::new()),
        jwks_file: Some(path("rsa_public.pem")),
        user_claim: String::new(),
        issuer: Some(String::new()),
        token_cookie: Some("a b".into()),
        ..with_files(&["rsa_private.pem"])
    };
    let settings: Vec<_> = setup_errors(&many).iter().map(|e| e.setting).collect();
    let expected = [
        Setting::JwtSecret,
        Setting::PublicKeyFile,
        Setting::JwksFile,
        Setting::UserClaim,
        Setting::Issuer,
        Setting::TokenCookie,
    ];
    assert_eq!(settings, expected);
    let es256 = setup_errors(&JwtConfig { algorithms: vec!["ES256".into()], ..with_secret() });
    assert!(es256[0].message.contains("P-256"), "{}", es256[0]);
}
