//! Who is calling: a bearer token or API key (checked here; the decision looks it up by a
//! keyed hash or its SHA-256, and keeps neither the token nor the hash), or an anonymous
//! client grouped by the network of the address the proxy resolved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::Identity;
use crate::headermap;

/// What the core needs to know of a request. The host fills it from the request headers
/// and, only when no credential is present, from the resolved client address.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// `:path`, query string included or not.
    pub path: &'a str,
    /// Every `authorization` header value, in order received.
    pub authorization: Vec<&'a str>,
    /// Every value of the configured API-key header.
    pub api_key: Vec<&'a str>,
    /// The downstream address as the proxy resolved it (`source.address`, e.g.
    /// `203.0.113.7:0` or `[2001:db8::1]:443`); never taken from `X-Forwarded-For` here.
    pub client_address: Option<&'a str>,
    /// Where the host looks the client address up when `client_address` is not given and
    /// the decision needs it after all: a failing credential is counted per network.
    pub client_address_of: Option<fn() -> Option<String>>,
    /// An `authorization` or API-key value that is not UTF-8 was sent (it is malformed).
    pub unreadable_credential: bool,
    /// The whole request body, on a metered route only ([`crate::decision::meter_of`]);
    /// `None` elsewhere, where bodies are never read.
    pub body: Option<&'a [u8]>,
}

impl<'a> RequestInfo<'a> {
    /// Picks the fields out of a request's header map as the proxy-wasm ABI serializes it
    /// ([`crate::headermap`]; names in lower case, as proxies give them), without copying.
    /// Values need not be UTF-8: a credential that is not is malformed
    /// ([`RequestInfo::unreadable_credential`]); a path that is not is matched on its
    /// longest UTF-8 prefix; other headers are not looked at.
    pub fn from_header_map(map: &'a [u8], api_key_header: Option<&str>) -> Self {
        let api_key_header = api_key_header.map(str::as_bytes);
        let mut info = RequestInfo::default();
        for (name, value) in headermap::pairs(map) {
            match name {
                b":method" => info.method = utf8_prefix(value),
                b":path" => info.path = utf8_prefix(value),
                b"authorization" => match std::str::from_utf8(value) {
                    Ok(value) => info.authorization.push(value),
                    Err(_) => info.unreadable_credential = true,
                },
                other if Some(other) == api_key_header => match std::str::from_utf8(value) {
                    Ok(value) => info.api_key.push(value),
                    Err(_) => info.unreadable_credential = true,
                },
                _ => {}
            }
        }
        info
    }
}

/// The longest prefix of `bytes` that is UTF-8.
fn utf8_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(bytes.get(..e.valid_up_to()).unwrap_or_default()).unwrap_or_default(),
    }
}

/// Why a credential could not be read. Each is a 400: the request is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    Duplicate,
    NotBearer,
    Empty,
    TooLong,
    BadCharacters,
}

impl CredentialError {
    pub fn describe(self) -> &'static str {
        match self {
            CredentialError::Duplicate => {
                "more than one credential was sent (repeated Authorization or API-key headers, or both)"
            }
            CredentialError::NotBearer => {
                "the Authorization header must use the Bearer scheme: 'Authorization: Bearer <token>'"
            }
            CredentialError::Empty => "the credential is empty",
            CredentialError::TooLong => "the credential is longer than the configured maximum",
            CredentialError::BadCharacters => {
                "the token contains characters not allowed in a bearer token (RFC 6750 token68)"
            }
        }
    }
}

/// Reads the one credential of a request, `Authorization: Bearer <token>` or the API-key
/// header, and checks it (one credential, not empty, not too long, RFC 6750 `token68`).
/// `None`: no credential.
pub fn token<'r>(identity: &Identity, request: &RequestInfo<'r>) -> Result<Option<&'r str>, CredentialError> {
    if request.unreadable_credential {
        let others = request.authorization.len() + request.api_key.len();
        return Err(if others > 0 { CredentialError::Duplicate } else { CredentialError::BadCharacters });
    }
    // Envoy joins a repeated header it knows (Authorization among them) into one value with
    // ",", which no token holds: such a value is two credentials.
    if request.authorization.iter().chain(&request.api_key).any(|v| is_joined(v)) {
        return Err(CredentialError::Duplicate);
    }
    let token = match (request.authorization.as_slice(), request.api_key.as_slice()) {
        ([], []) => return Ok(None),
        ([auth], []) => bearer_token(auth)?,
        ([], [key]) => key.trim_matches([' ', '\t']),
        _ => return Err(CredentialError::Duplicate),
    };
    if token.is_empty() {
        return Err(CredentialError::Empty);
    }
    if token.len() > identity.max_credential_length {
        return Err(CredentialError::TooLong);
    }
    if !is_token68(token) {
        return Err(CredentialError::BadCharacters);
    }
    Ok(Some(token))
}

/// Two or more non-empty values joined with "," (a trailing comma alone is just malformed).
fn is_joined(value: &str) -> bool {
    value.split(',').filter(|part| !part.trim_matches([' ', '\t']).is_empty()).nth(1).is_some()
}

/// `Bearer <token>`: the scheme is case-insensitive, followed by one or more spaces.
fn bearer_token(value: &str) -> Result<&str, CredentialError> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(CredentialError::NotBearer);
    }
    Ok(rest.trim_start_matches(' '))
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The anonymous caller's bucket name: the client's network, e.g. `203.0.113.7/32` or
/// `2001:db8:1:2::/64`. Addresses that cannot be parsed all share the bucket `unknown`.
pub fn client_network(address: Option<&str>, ipv4_prefix: u8, ipv6_prefix: u8) -> String {
    let Some(ip) = address.and_then(parse_address) else {
        return "unknown".to_owned();
    };
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let masked = Ipv4Addr::from(u32::from(v4) & mask32(ipv4_prefix));
            // `a.b.c.d/p`, without the formatting machinery (this runs per anonymous request).
            let mut digits = itoa::Buffer::new();
            let mut network = String::with_capacity(18);
            for (i, octet) in masked.octets().into_iter().enumerate() {
                if i > 0 {
                    network.push('.');
                }
                network.push_str(digits.format(octet));
            }
            network.push('/');
            network.push_str(digits.format(ipv4_prefix));
            network
        }
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & mask128(ipv6_prefix);
            format!("{}/{ipv6_prefix}", Ipv6Addr::from(masked))
        }
    }
}

fn parse_address(address: &str) -> Option<IpAddr> {
    address.parse::<SocketAddr>().map(|s| s.ip()).or_else(|_| address.parse::<IpAddr>()).ok()
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn identity() -> Identity {
        Identity {
            api_key_header: Some("x-api-key".into()),
            anonymous_tier: Some(0),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_credential_length: 64,
            failed_credentials: None,
        }
    }

    fn with(auth: &[&'static str], key: &[&'static str]) -> Result<Option<&'static str>, CredentialError> {
        let req = RequestInfo { authorization: auth.to_vec(), api_key: key.to_vec(), ..Default::default() };
        token(&identity(), &req)
    }

    #[test]
    fn the_bearer_token_or_the_api_key_is_read() {
        assert_eq!(with(&["Bearer abc"], &[]), Ok(Some("abc")));
        assert_eq!(with(&["bearer  abc=="], &[]), Ok(Some("abc==")));
        assert_eq!(with(&[], &["abc"]), Ok(Some("abc")));
    }

    #[test]
    fn no_credential_is_none() {
        assert_eq!(with(&[], &[]), Ok(None));
    }

    #[test]
    fn malformed_credentials_are_named() {
        assert_eq!(with(&["Basic dXNlcjpwYXNz"], &[]), Err(CredentialError::NotBearer));
        assert_eq!(with(&["Bearer"], &[]), Err(CredentialError::Empty));
        assert_eq!(with(&["Bearer a b"], &[]), Err(CredentialError::BadCharacters));
        assert_eq!(with(&["Bearer a,"], &[]), Err(CredentialError::BadCharacters));
        assert_eq!(with(&["Bearer ==="], &[]), Err(CredentialError::BadCharacters));
        assert_eq!(with(&["Bearer a"], &["b"]), Err(CredentialError::Duplicate));
        assert_eq!(with(&["Bearer a", "Bearer a"], &[]), Err(CredentialError::Duplicate));
        let long = format!("Bearer {}", "a".repeat(65));
        let req = RequestInfo { authorization: vec![&long], ..Default::default() };
        assert_eq!(token(&identity(), &req), Err(CredentialError::TooLong));
    }

    #[test]
    fn repeated_headers_joined_into_one_value_are_more_than_one_credential() {
        // Envoy hands two Authorization headers to the filter as one, joined with ",".
        assert_eq!(with(&["Bearer a,Bearer b"], &[]), Err(CredentialError::Duplicate));
        assert_eq!(with(&["Bearer a, Bearer a"], &[]), Err(CredentialError::Duplicate));
        assert_eq!(with(&[], &["k1,k2"]), Err(CredentialError::Duplicate));
        assert!(CredentialError::Duplicate.describe().starts_with("more than one credential"));
        let reply = crate::reply::malformed_credential(CredentialError::Duplicate);
        assert_eq!(reply.status, 400);
        assert!(reply.body.contains("Malformed credentials: more than one credential was sent"), "{}", reply.body);
    }

    #[test]
    fn headers_are_picked_by_name() {
        let map = headermap::serialize(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":path", b"/v1/x?y=1"),
            (b"authorization", b"Bearer t"),
            (b"x-api-key", b"k"),
            (b"x-other", b"o"),
        ]);
        let info = RequestInfo::from_header_map(&map, Some("x-api-key"));
        assert_eq!((info.method, info.path), ("POST", "/v1/x?y=1"));
        assert_eq!(info.authorization, vec!["Bearer t"]);
        assert_eq!(info.api_key, vec!["k"]);
        assert!(!info.unreadable_credential);
    }

    #[test]
    fn bytes_that_are_not_utf8_make_a_credential_malformed_and_nothing_else() {
        let read = |pairs: Vec<(&[u8], &[u8])>| {
            let map = headermap::serialize(pairs);
            let info = RequestInfo::from_header_map(&map, Some("x-api-key"));
            (info.path.to_owned(), token(&identity(), &info).map(|t| t.map(str::to_owned)))
        };
        let (_, unrelated) = read(vec![(b"user-agent", b"caf\xe9"), (b"authorization", b"Bearer abc")]);
        assert_eq!(unrelated, Ok(Some("abc".to_owned())));
        assert_eq!(read(vec![(b"authorization", b"Bearer abc\xe9")]).1, Err(CredentialError::BadCharacters));
        assert_eq!(read(vec![(b"x-api-key", b"\xff\xfe")]).1, Err(CredentialError::BadCharacters));
        let both = read(vec![(b"x-api-key", b"\xff"), (b"authorization", b"Bearer abc")]).1;
        assert_eq!(both, Err(CredentialError::Duplicate));
        let (path, none) = read(vec![(b":path", b"/v1/images\xff/x")]);
        assert_eq!((path.as_str(), none), ("/v1/images", Ok(None)));
    }

    #[test]
    fn ipv4_clients_group_by_prefix() {
        assert_eq!(client_network(Some("203.0.113.7:51172"), 32, 64), "203.0.113.7/32");
        assert_eq!(client_network(Some("203.0.113.7:0"), 24, 64), "203.0.113.0/24");
        assert_eq!(client_network(Some("203.0.113.7"), 0, 64), "0.0.0.0/0");
    }

    #[test]
    fn ipv6_clients_share_a_64() {
        let a = client_network(Some("[2001:db8:1:2::1]:0"), 32, 64);
        let b = client_network(Some("[2001:db8:1:2:ffff::9]:443"), 32, 64);
        let c = client_network(Some("[2001:db8:1:3::1]:0"), 32, 64);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        assert_eq!(client_network(Some("[::ffff:203.0.113.7]:1"), 32, 64), "203.0.113.7/32");
    }

    #[test]
    fn unparseable_addresses_share_one_bucket() {
        assert_eq!(client_network(None, 32, 64), "unknown");
        assert_eq!(client_network(Some("envoy://internal"), 32, 64), "unknown");
    }
}
