//! Claims, token extraction, minting and hostile input.

use super::*;

#[test]
fn rejects_bad_signatures() {
    let a = auth(&with_secret());
    let other = EncodingKey::from_secret(b"another-secret-entirely-32-bytes!");
    assert_eq!(code(a.verify(&sign(Algorithm::HS256, &other, None, &claims()))), "invalid_signature");
    // Valid header and signature, payload swapped for another user's.
    let good = sign(Algorithm::HS256, &hmac(), None, &claims());
    let mallory = sign(Algorithm::HS256, &other, None, &json!({"sub": "mallory", "exp": 1u64 << 40}));
    let parts: Vec<&str> = good.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], mallory.split('.').nth(1).unwrap(), parts[2]);
    assert_eq!(code(a.verify(&spliced)), "invalid_signature");
    let err = a.verify(&spliced).unwrap_err();
    assert_eq!(err.to_string(), "token signature does not match");
}

#[test]
fn checks_expiry_and_not_before() {
    let a = auth(&with_secret());
    let now = unix_now();
    let token = |claims: Value| sign(Algorithm::HS256, &hmac(), None, &claims);
    let expired = a.verify(&token(json!({"sub": "a", "exp": now - 60}))).unwrap_err();
    assert_eq!(expired.code(), "expired");
    assert!(expired.to_string().starts_with("token expired at 20"), "{expired}");
    assert!(a.verify(&token(json!({"sub": "a", "exp": now - 2}))).is_ok(), "within leeway");
    assert_eq!(code(a.verify(&token(json!({"sub": "a"})))), "missing_exp");
    let early = json!({"sub": "a", "exp": now + 600, "nbf": now + 60});
    assert_eq!(code(a.verify(&token(early))), "not_yet_valid");
    assert!(a.verify(&token(json!({"sub": "a", "exp": now + 600, "nbf": now + 2}))).is_ok());
}

#[test]
fn checks_issuer_and_audience() {
    let cfg = JwtConfig { issuer: Some("https://idp".into()), audience: Some("pgsse".into()), ..with_secret() };
    let a = auth(&cfg);
    let exp = unix_now() + 600;
    let token = |claims: Value| sign(Algorithm::HS256, &hmac(), None, &claims);
    assert!(a.verify(&token(json!({"sub": "a", "exp": exp, "iss": "https://idp", "aud": "pgsse"}))).is_ok());
    let many = json!({"sub": "a", "exp": exp, "iss": "https://idp", "aud": ["x", "pgsse"]});
    assert!(a.verify(&token(many)).is_ok());
    let wrong_iss = json!({"sub": "a", "exp": exp, "iss": "https://evil", "aud": "pgsse"});
    assert_eq!(code(a.verify(&token(wrong_iss))), "invalid_issuer");
    assert_eq!(code(a.verify(&token(json!({"sub": "a", "exp": exp, "aud": "pgsse"})))), "invalid_issuer");
    let wrong_aud = json!({"sub": "a", "exp": exp, "iss": "https://idp", "aud": "other"});
    assert_eq!(code(a.verify(&token(wrong_aud))), "invalid_audience");
}

#[test]
fn user_claim_is_configurable_and_may_be_numeric() {
    let a = auth(&JwtConfig { user_claim: "uid".into(), ..with_secret() });
    let exp = unix_now() + 600;
    let token = |claims: Value| sign(Algorithm::HS256, &hmac(), None, &claims);
    assert_eq!(&*a.verify(&token(json!({"uid": "u-1", "sub": "x", "exp": exp}))).unwrap().user_id, "u-1");
    assert_eq!(&*a.verify(&token(json!({"uid": 42, "exp": exp}))).unwrap().user_id, "42");
    let missing = a.verify(&token(json!({"sub": "x", "exp": exp}))).unwrap_err();
    assert_eq!((missing.code(), missing.to_string().as_str()), ("missing_user_claim", "token has no \"uid\" claim"));
    assert_eq!(code(a.verify(&token(json!({"uid": true, "exp": exp})))), "invalid_user_claim");
}

#[test]
fn authenticate_reads_header_cookie_and_query() {
    let cfg = JwtConfig { token_cookie: Some("session".into()), ..with_secret() };
    let a = auth(&cfg);
    let token = sign(Algorithm::HS256, &hmac(), None, &claims());
    let headers = |name, value: String| {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(&value).unwrap());
        h
    };
    assert!(a.authenticate(&headers(AUTHORIZATION, format!("bearer {token}")), None).is_ok());
    assert!(a.authenticate(&headers(COOKIE, format!("a=1; session=\"{token}\"; b=2")), None).is_ok());
    let query = format!("x=1&access_token={}&y=%20", token.replace('.', "%2E"));
    assert!(a.authenticate(&HeaderMap::new(), Some(&query)).is_ok());
    assert_eq!(code(a.authenticate(&HeaderMap::new(), None)), "missing_token");
    // A broken header token is final: the valid cookie is not consulted.
    let mut both = headers(COOKIE, format!("session={token}"));
    both.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token} x")).unwrap());
    assert_eq!(code(a.authenticate(&both, None)), "malformed_token");

    let no_query = auth(&JwtConfig { token_query_param: None, ..with_secret() });
    assert_eq!(code(no_query.authenticate(&HeaderMap::new(), Some(&query))), "missing_token");
}

#[test]
fn minted_tokens_verify() {
    let ttl = Duration::from_secs(3600);
    let token = mint_hs256("alice", SECRET.as_bytes(), ttl, Some("https://idp"), Some("pgsse")).unwrap();
    let cfg = JwtConfig { issuer: Some("https://idp".into()), audience: Some("pgsse".into()), ..with_secret() };
    let id = auth(&cfg).verify(&token).unwrap();
    assert_eq!(&*id.user_id, "alice");
    let exp = id.expires_at.unwrap();
    assert!((unix_now() + 3590..=unix_now() + 3600).contains(&exp), "{exp}");
    let at = mint::mint_at("bob", SECRET.as_bytes(), ttl, None, None, 1_000).unwrap();
    assert_eq!(auth(&with_secret()).verify_at(&at, 2_000).unwrap().expires_at, Some(4_600));
}

#[test]
fn garbage_is_rejected_without_panic_or_echo() {
    let a = auth(&JwtConfig { jwt_secret: Some(SECRET.into()), ..with_jwks("jwks.json") });
    let mut rng = StdRng::seed_from_u64(42);
    let valid = sign(Algorithm::HS256, &hmac(), None, &claims());
    let alphabet: Vec<char> = "AZaz09-_.=+/ \t%\"{}é\0".chars().collect();
    for round in 0..400 {
        let case: String = if round % 2 == 0 {
            (0..rng.random_range(0..120)).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
        } else {
            let mut chars: Vec<char> = valid.chars().collect();
            let at = rng.random_range(0..chars.len());
            let replacement = loop {
                let c = alphabet[rng.random_range(0..alphabet.len())];
                if c != chars[at] {
                    break c;
                }
            };
            chars[at] = replacement;
            let keep = rng.random_range(at + 1..=chars.len());
            chars.into_iter().take(keep).collect()
        };
        let err = a.verify(&case).unwrap_err();
        if case.len() > 16 {
            assert!(!err.to_string().contains(&case), "{err}");
        }
    }
    for spaced in [format!(" {valid}"), format!("{valid}\t"), valid.replacen('.', ". ", 1)] {
        assert_eq!(code(a.verify(&spaced)), "malformed_token");
    }
}
