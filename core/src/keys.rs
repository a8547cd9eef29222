//! API key format and verification.
//!
//! A key looks like `sk_live_<id:22><secret:32><crc:6>` (secret keys) or `pk_live_…`
//! (publishable keys), all base62 after the prefix:
//! - `id` is the key's [`ApiKeyId`], so a key is found by a primary-key lookup, never by
//!   scanning hashes;
//! - `secret` is 32 random base62 characters (~190 bits);
//! - `crc` is the CRC-32 of everything before it, so secret scanners (and we) can tell a real
//!   key from a typo without a database round-trip.
//!
//! Only a keyed hash of the secret is stored: HMAC-SHA256 with the server's pepper. Keys are
//! high-entropy, so a slow password hash (argon2) would only cost ~20 ms per request without
//! adding protection. Verification compares in constant time.

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::id::{ApiKeyId, ProjectId};
use crate::model::KeyKind;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const ID_LEN: usize = 22;
const SECRET_LEN: usize = 32;
const CRC_LEN: usize = 6;
const BODY_LEN: usize = ID_LEN + SECRET_LEN + CRC_LEN;
/// How many characters of the body are shown in listings (`prefix`).
const VISIBLE_LEN: usize = 6;

/// The string prefix for a kind of key.
pub const fn prefix_for(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Secret => "sk_live_",
        KeyKind::Publishable => "pk_live_",
    }
}

/// Why a presented key was rejected before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("unknown key prefix")]
    Prefix,
    #[error("key has the wrong length or characters")]
    Shape,
    #[error("key checksum does not match")]
    Checksum,
}

/// A freshly generated key: the full string is shown to the user once.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub id: ApiKeyId,
    pub kind: KeyKind,
    /// The full key, e.g. `sk_live_…`. Never stored.
    pub plaintext: String,
    /// Visible part for listings, e.g. `sk_live_0A1b2C`.
    pub prefix: String,
    /// Keyed hash of the secret part, to store.
    pub secret_hash: [u8; 32],
}

/// A presented key split into its parts (format and checksum already checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub kind: KeyKind,
    pub id: ApiKeyId,
    secret: &'a str,
}

impl ParsedKey<'_> {
    /// Whether the secret matches `stored_hash`, in constant time.
    pub fn verify(&self, pepper: &[u8], stored_hash: &[u8; 32]) -> bool {
        let h = hash_secret(pepper, self.secret);
        h.ct_eq(stored_hash).into()
    }
}

/// Generates a new key of `kind`. `pepper` is the server-wide secret used to hash keys.
pub fn generate(kind: KeyKind, pepper: &[u8]) -> GeneratedKey {
    let id = ApiKeyId::new_v7();
    let mut rng = rand::thread_rng();
    let secret: String = (0..SECRET_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    let mut plaintext = String::with_capacity(8 + BODY_LEN);
    plaintext.push_str(prefix_for(kind));
    plaintext.push_str(&encode_fixed(id.as_uuid().as_u128(), ID_LEN));
    plaintext.push_str(&secret);
    let crc = crc32fast::hash(plaintext.as_bytes());
    plaintext.push_str(&encode_fixed(u128::from(crc), CRC_LEN));
    let prefix = plaintext[..prefix_for(kind).len() + VISIBLE_LEN].to_owned();
    GeneratedKey {
        id,
        kind,
        secret_hash: hash_secret(pepper, &secret),
        prefix,
        plaintext,
    }
}

/// Splits a presented key, checking prefix, shape and checksum. Does not touch any store.
pub fn parse(key: &str) -> Result<ParsedKey<'_>, KeyFormatError> {
    let (kind, body) = if let Some(b) = key.strip_prefix(prefix_for(KeyKind::Secret)) {
        (KeyKind::Secret, b)
    } else if let Some(b) = key.strip_prefix(prefix_for(KeyKind::Publishable)) {
        (KeyKind::Publishable, b)
    } else {
        return Err(KeyFormatError::Prefix);
    };
    if body.len() != BODY_LEN || !body.bytes().all(|b| ALPHABET.contains(&b)) {
        return Err(KeyFormatError::Shape);
    }
    let (signed, crc) = key.split_at(key.len() - CRC_LEN);
    let expected = encode_fixed(u128::from(crc32fast::hash(signed.as_bytes())), CRC_LEN);
    if crc != expected {
        return Err(KeyFormatError::Checksum);
    }
    let id = decode(&body[..ID_LEN]).ok_or(KeyFormatError::Shape)?;
    Ok(ParsedKey {
        kind,
        id: ApiKeyId::from_uuid(Uuid::from_u128(id)),
        secret: &body[ID_LEN..ID_LEN + SECRET_LEN],
    })
}

/// Whether a string looks like one of our keys (used to tell keys from JWTs in headers).
pub fn looks_like_key(s: &str) -> bool {
    s.starts_with(prefix_for(KeyKind::Secret)) || s.starts_with(prefix_for(KeyKind::Publishable))
}

/// A project's identity-verification secret: the key tenants use to sign `user_hash`
/// (`hex(HMAC-SHA256(secret, identifier))`) or user JWTs for the widget.
///
/// Derived rather than stored: HMAC of the server pepper over the project id and a generation
/// counter kept in the project's widget settings, so rotating is bumping the counter and no
/// secret sits in the database.
pub fn identity_secret(pepper: &[u8], project: ProjectId, generation: u32) -> String {
    let mac = hmac_sha256(
        pepper,
        format!("larachat-identity:{project}:{generation}").as_bytes(),
    );
    hex(&mac)
}

/// `hex(HMAC-SHA256(key, message))`, lowercase.
pub fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    hex(&hmac_sha256(key, message))
}

/// Constant-time equality of two strings (for comparing proofs).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_secret(pepper: &[u8], secret: &str) -> [u8; 32] {
    // HMAC accepts keys of any length, including empty.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper).expect("HMAC takes any key length");
    mac.update(secret.as_bytes());
    mac.finalize().into_bytes().into()
}

fn encode_fixed(mut v: u128, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    debug_assert_eq!(v, 0, "value does not fit in {width} base62 digits");
    String::from_utf8(out).unwrap_or_default()
}

fn decode(s: &str) -> Option<u128> {
    s.bytes().try_fold(0u128, |acc, b| {
        let d = ALPHABET.iter().position(|&a| a == b)? as u128;
        acc.checked_mul(62)?.checked_add(d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        for kind in [KeyKind::Secret, KeyKind::Publishable] {
            let k = generate(kind, b"pepper");
            assert!(k.plaintext.starts_with(prefix_for(kind)));
            assert!(k.plaintext.starts_with(&k.prefix));
            let p = parse(&k.plaintext).unwrap();
            assert_eq!(p.id, k.id);
            assert_eq!(p.kind, kind);
            assert!(p.verify(b"pepper", &k.secret_hash));
            assert!(!p.verify(b"other pepper", &k.secret_hash));
        }
    }

    #[test]
    fn tampering_is_caught_by_checksum_or_hash() {
        let k = generate(KeyKind::Secret, b"");
        let mut chars: Vec<char> = k.plaintext.chars().collect();
        let i = 8 + ID_LEN + 3; // inside the secret
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        let tampered: String = chars.into_iter().collect();
        assert_eq!(parse(&tampered).unwrap_err(), KeyFormatError::Checksum);
        assert_eq!(parse("sk_test_abc").unwrap_err(), KeyFormatError::Prefix);
        assert_eq!(parse("sk_live_abc").unwrap_err(), KeyFormatError::Shape);
        let with_dot = format!("{}.", &k.plaintext[..k.plaintext.len() - 1]);
        assert_eq!(parse(&with_dot).unwrap_err(), KeyFormatError::Shape);
    }

    #[test]
    fn identity_secrets_differ_by_project_generation_and_pepper() {
        let p = ProjectId::new_v7();
        let a = identity_secret(b"pepper", p, 0);
        assert_eq!(a.len(), 64);
        assert_eq!(a, identity_secret(b"pepper", p, 0));
        assert_ne!(a, identity_secret(b"pepper", p, 1));
        assert_ne!(a, identity_secret(b"other", p, 0));
        assert_ne!(a, identity_secret(b"pepper", ProjectId::new_v7(), 0));
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }

    #[test]
    fn base62_round_trips() {
        for v in [0u128, 1, 61, 62, u128::from(u32::MAX), u128::MAX] {
            assert_eq!(decode(&encode_fixed(v, 22)), Some(v));
        }
    }
}
