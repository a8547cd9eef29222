//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! A delivery carries three headers: `webhook-id` (the event's stable id, the receiver's
//! de-duplication key), `webhook-timestamp` (Unix seconds of this attempt) and
//! `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one
//! per secret that is valid right now, so a receiver that knows either the old or the new
//! secret accepts deliveries during a rotation overlap.
//!
//! Secrets are `whsec_<base64 of 24 random bytes>`; the HMAC key is the decoded bytes. The
//! HMAC itself comes from the `hmac` / `sha2` crates; only the framing is ours.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The prefix of every secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a generated secret (the spec asks for 24 to 64).
const SECRET_BYTES: usize = 24;

/// Header names (lower case, as the spec writes them).
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Why a secret or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The secret is not `whsec_` followed by base64 of 24 to 64 bytes.
    #[error("a webhook secret is `whsec_` followed by base64 of 24 to 64 bytes")]
    BadSecret,
    /// No `v1` signature in the header matched any of the secrets.
    #[error("no signature matches")]
    NoMatch,
    /// The timestamp is not Unix seconds or is too far from now.
    #[error("timestamp outside the tolerance")]
    BadTimestamp,
}

/// A signing secret (`whsec_…`). Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl Secret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut key = vec![0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self { key }
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let b64 = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SigningError::BadSecret)?;
        let key = STANDARD.decode(b64).map_err(|_| SigningError::BadSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SigningError::BadSecret);
        }
        Ok(Self { key })
    }

    /// The `whsec_…` form (shown to the client once, and stored).
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body)))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        // new_from_slice accepts any key length for HMAC; the error arm cannot happen.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

/// The value of `webhook-signature` for `body` under every secret in `secrets`.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a delivery as a receiver would: the timestamp within `tolerance_secs` of `now` and
/// at least one `v1` signature made with `secret`. Used by our tests and by integrators who
/// embed the crate; the independent check is the `standardwebhooks` package.
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SigningError> {
    let ts: i64 = timestamp.parse().map_err(|_| SigningError::BadTimestamp)?;
    if (now - ts).abs() > tolerance_secs {
        return Err(SigningError::BadTimestamp);
    }
    let expected = secret.mac(id, ts, body);
    let matched = signature_header
        .split(' ')
        .filter_map(|part| part.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|sig| bool::from(sig.ct_eq(&expected)));
    if matched {
        Ok(())
    } else {
        Err(SigningError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference implementations (their test suites).
    #[test]
    fn matches_the_reference_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let s = Secret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(Secret::parse(&s.expose()).unwrap(), s);
        assert_ne!(Secret::generate(), s);
        for bad in ["", "whsec_", "sk_abc", "whsec_!!!!", "whsec_AAAA"] {
            assert_eq!(Secret::parse(bad), Err(SigningError::BadSecret), "{bad}");
        }
        assert!(!format!("{s:?}").contains(&s.expose()[6..]));
    }

    #[test]
    fn either_secret_verifies_during_a_rotation() {
        let (old, new, other) = (Secret::generate(), Secret::generate(), Secret::generate());
        let header = signature_header([&new, &old], "evt_1", 1000, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        for s in [&old, &new] {
            assert_eq!(
                verify(s, "evt_1", "1000", &header, b"{}", 1010, 300),
                Ok(())
            );
        }
        let refused = verify(&other, "evt_1", "1000", &header, b"{}", 1010, 300);
        assert_eq!(refused, Err(SigningError::NoMatch));
        let tampered = verify(&old, "evt_1", "1000", &header, b"{ }", 1010, 300);
        assert_eq!(tampered, Err(SigningError::NoMatch));
        let stale = verify(&old, "evt_1", "1000", &header, b"{}", 2000, 300);
        assert_eq!(stale, Err(SigningError::BadTimestamp));
    }
}
