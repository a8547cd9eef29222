//! Web origins (`scheme://host[:port]`) as browsers send them in the `Origin` header.
//!
//! [`Origin::parse`] is the one place an origin a tenant types is read: it accepts what a
//! person would write for a site (`https://ACME.com`, `https://acme.com:443`,
//! `https://bücher.de`, a trailing `/`) and keeps its normalised form, the origin's ASCII
//! serialisation (WHATWG URL, `url::Origin::ascii_serialization`): lower-case host, IDN hosts
//! in punycode, the scheme's default port dropped. That is the form a browser sends, so an
//! allow-list of [`Origin`]s is compared with a request's origin (also parsed) for equality.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ApiError;

/// A normalised `http`/`https` origin: `scheme://host[:port]`, no path, no wildcard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origin(String);

impl Origin {
    /// Parses and normalises an origin; errors name the value and say what an origin looks
    /// like. `null`, paths, queries, credentials, wildcards and other schemes are refused.
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| {
            ApiError::validation(format!(
                "origin {value:?} {why}: it must look like https://example.com or http://host:port"
            ))
        };
        let url = url::Url::parse(value.trim()).map_err(|e| bad(&format!("is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must use http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not hold credentials"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not have a path, query or fragment"));
        }
        let host = url.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if host.contains('*') {
            return Err(bad("must not hold a wildcard (list each origin)"));
        }
        if url.port() == Some(0) {
            return Err(bad("has port 0"));
        }
        let origin = url.origin();
        if !origin.is_tuple() {
            return Err(bad("is opaque"));
        }
        Ok(Self(origin.ascii_serialization()))
    }

    /// The normalised origin, as a browser sends it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Origin {
    type Error = ApiError;
    fn try_from(value: String) -> Result<Self, ApiError> {
        Self::parse(&value)
    }
}

impl From<Origin> for String {
    fn from(o: Origin) -> String {
        o.0
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_what_people_type_into_what_browsers_send() {
        for (input, normal) in [
            ("https://acme.com", "https://acme.com"),
            ("https://acme.com:443", "https://acme.com"),
            ("http://acme.com:80", "http://acme.com"),
            ("https://ACME.com", "https://acme.com"),
            ("HTTPS://Shop.Acme.CO.UK", "https://shop.acme.co.uk"),
            ("https://acme.com/", "https://acme.com"),
            (" https://acme.com ", "https://acme.com"),
            ("https://acme.com:8443", "https://acme.com:8443"),
            ("http://acme.com:443", "http://acme.com:443"),
            ("https://bücher.de", "https://xn--bcher-kva.de"),
            ("https://BÜCHER.de:443", "https://xn--bcher-kva.de"),
            ("https://xn--bcher-kva.de", "https://xn--bcher-kva.de"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("http://[0:0:0:0:0:0:0:1]:8080", "http://[::1]:8080"),
        ] {
            let o = Origin::parse(input).unwrap_or_else(|e| panic!("{input}: {e:?}"));
            assert_eq!(o.as_str(), normal, "{input}");
            assert_eq!(Origin::parse(o.as_str()).unwrap(), o, "idempotent: {input}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_origin() {
        for bad in [
            "acme.com",
            "https://acme.com/path",
            "https://acme.com/?q=1",
            "https://acme.com#x",
            "https://user:pw@acme.com",
            "https://*.acme.com",
            "null",
            "",
            "ftp://acme.com",
            "file:///etc/passwd",
            "https://acme.com:0",
            "https://acme.com:99999",
            "https://",
            "data:text/html,x",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deserializes_through_the_same_rule() {
        let o: Origin = serde_json::from_str("\"https://ACME.com:443\"").unwrap();
        assert_eq!(o.as_str(), "https://acme.com");
        assert_eq!(serde_json::to_string(&o).unwrap(), "\"https://acme.com\"");
        assert!(serde_json::from_str::<Origin>("\"null\"").is_err());
    }
}
