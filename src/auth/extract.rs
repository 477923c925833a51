//! Finds the token in a request: `Authorization: Bearer`, then a cookie, then a query parameter.

use std::borrow::Cow;

use hyper::header::{AUTHORIZATION, COOKIE};
use hyper::HeaderMap;

use super::error::AuthError;

/// Returns the first token source present. A present-but-broken source is an
/// error rather than a reason to look further: only one token is ever tried.
pub(crate) fn extract_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    cookie_name: Option<&str>,
    query_param: Option<&str>,
) -> Result<Cow<'a, str>, AuthError> {
    // Other schemes (e.g. Basic added by a proxy) are not ours; keep looking.
    if let Some(token) = headers.get_all(AUTHORIZATION).iter().find_map(|v| bearer(v.as_bytes())) {
        return ascii_token(token).map(Cow::Borrowed);
    }
    if let Some(name) = cookie_name {
        let found = headers.get_all(COOKIE).iter().find_map(|v| find_cookie(v.as_bytes(), name));
        if let Some(token) = found {
            return ascii_token(token).map(Cow::Borrowed);
        }
    }
    if let (Some(name), Some(query)) = (query_param, query) {
        if let Some(token) = find_query_param(query, name) {
            return token;
        }
    }
    Err(AuthError::MissingToken)
}

/// The credentials after a case-insensitive `Bearer` scheme, or `None` for other schemes.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let split = value.iter().position(|b| matches!(b, b' ' | b'\t')).unwrap_or(value.len());
    let (scheme, rest) = value.split_at(split);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii())
}

fn ascii_token(token: &[u8]) -> Result<&str, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Malformed("empty token"));
    }
    std::str::from_utf8(token).map_err(|_| AuthError::Malformed("token is not ASCII"))
}

/// Value of cookie `name` from one `Cookie` header, unquoted. Empty values count
/// as absent so that a cleared cookie does not shadow the query parameter.
pub(crate) fn find_cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (key, value) = pair.split_at(eq);
        if key.trim_ascii() != name.as_bytes() {
            return None;
        }
        let value = value.strip_prefix(b"=")?.trim_ascii();
        let value = match value {
            [b'"', inner @ .., b'"'] => inner,
            other => other,
        };
        (!value.is_empty()).then_some(value)
    })
}

/// First non-empty value of `name` in a raw (form-encoded) query string.
pub(crate) fn find_query_param<'a>(query: &'a str, name: &str) -> Option<Result<Cow<'a, str>, AuthError>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(key).as_deref() != Some(name) || value.is_empty() {
            return None;
        }
        Some(form_decode(value).ok_or(AuthError::Malformed("query parameter is not valid UTF-8")))
    })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
/// Invalid escapes are kept literally, as browsers do; `None` if the result is not UTF-8.
fn form_decode(input: &str) -> Option<Cow<'_, str>> {
    decode(input, true)
}

/// Percent-decoding only (`encodeURIComponent` output, e.g. cookie values): `+` stays `+`.
pub(crate) fn form_decode_path(input: &str) -> Option<Cow<'_, str>> {
    decode(input, false)
}

fn decode(input: &str, plus_is_space: bool) -> Option<Cow<'_, str>> {
    if !input.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return Some(Cow::Borrowed(input));
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match (b, bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => Some((hi << 4) | lo),
            _ => None,
        };
        match (b, escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            (other, None) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex(b: &u8) -> Option<u8> {
    char::from(*b).to_digit(16).map(|d| d as u8)
}

/// RFC 6265 cookie-name: a token, i.e. visible ASCII without separators.
pub(crate) fn is_cookie_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
            map.append(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn extract(h: &HeaderMap, query: Option<&str>) -> Result<String, AuthError> {
        extract_token(h, query, Some("jwt"), Some("access_token")).map(Cow::into_owned)
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for value in ["Bearer a.b.c", "bearer a.b.c", "BEARER  a.b.c ", "BeArEr\ta.b.c"] {
            assert_eq!(extract(&headers(&[("authorization", value)]), None).unwrap(), "a.b.c");
        }
        let err = extract(&headers(&[("authorization", "Bearer")]), None).unwrap_err();
        assert_eq!(err.code(), "malformed_token");
        // "Bearerx" is a different scheme, so it is skipped.
        let err = extract(&headers(&[("authorization", "Bearerx a.b.c")]), None).unwrap_err();
        assert_eq!(err.code(), "missing_token");
    }

    #[test]
    fn other_schemes_fall_through_to_cookie() {
        let h = headers(&[("authorization", "Basic dXNlcjpwdw=="), ("cookie", "jwt=c.c.c")]);
        assert_eq!(extract(&h, None).unwrap(), "c.c.c");
    }

    #[test]
    fn header_wins_over_cookie_and_query() {
        let h = headers(&[("cookie", "jwt=c.c.c"), ("authorization", "Bearer h.h.h")]);
        assert_eq!(extract(&h, Some("access_token=q.q.q")).unwrap(), "h.h.h");
        let h = headers(&[("cookie", "jwt=c.c.c")]);
        assert_eq!(extract(&h, Some("access_token=q.q.q")).unwrap(), "c.c.c");
    }

    #[test]
    fn cookies_tolerate_lists_spaces_and_quotes() {
        let cases = [
            "jwt=t.t.t",
            "a=1; jwt=t.t.t; b=2",
            "a=1;jwt = t.t.t ;b=2",
            "theme=\"dark\"; jwt=\"t.t.t\"",
            "jwtx=nope; xjwt=nope; jwt=t.t.t",
            "flag; jwt=t.t.t",
        ];
        for cookie in cases {
            assert_eq!(extract(&headers(&[("cookie", cookie)]), None).unwrap(), "t.t.t", "{cookie}");
        }
        let h = headers(&[("cookie", "a=1"), ("cookie", "jwt=t.t.t")]);
        assert_eq!(extract(&h, None).unwrap(), "t.t.t");
        let h = headers(&[("cookie", "jwt=; other=1")]);
        assert_eq!(extract(&h, None).unwrap_err().code(), "missing_token");
        let h = headers(&[("cookie", "jwt=t.t.t")]);
        let none = extract_token(&h, None, None, None);
        assert_eq!(none.unwrap_err().code(), "missing_token");
    }

    #[test]
    fn query_param_is_percent_decoded_among_others() {
        let h = HeaderMap::new();
        assert_eq!(extract(&h, Some("access_token=a.b.c")).unwrap(), "a.b.c");
        assert_eq!(extract(&h, Some("x=1&access_token=a%2Eb%2ec%2B&y")).unwrap(), "a.b.c+");
        assert_eq!(extract(&h, Some("access%5Ftoken=a.b.c&access_token=zzz")).unwrap(), "a.b.c");
        assert_eq!(extract(&h, Some("a=%zz&access_token=a+b%")).unwrap(), "a b%");
        assert_eq!(extract(&h, Some("access_token=&access_token=x.y.z")).unwrap(), "x.y.z");
        assert_eq!(extract(&h, Some("access_tokens=a.b.c")).unwrap_err().code(), "missing_token");
        assert_eq!(extract(&h, Some("access_token=%FF")).unwrap_err().code(), "malformed_token");
        assert_eq!(extract(&h, Some("")).unwrap_err().code(), "missing_token");
    }

    #[test]
    fn query_param_can_be_disabled() {
        let h = HeaderMap::new();
        let err = extract_token(&h, Some("access_token=a.b.c"), Some("jwt"), None).unwrap_err();
        assert_eq!(err.code(), "missing_token");
    }
}
