//! Input rules shared by every transport. Handlers parse into typed values through these
//! functions ("parse, don't validate"), so a value that reached the store has passed them.

use crate::error::ApiError;

/// Longest message text, in bytes of UTF-8.
pub const MAX_MESSAGE_TEXT_BYTES: usize = 16 * 1024;
/// Longest serialized `metadata` object, in bytes.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Longest `client_msg_id`.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;
/// Longest tenant-supplied identifier (`user_identifier`, agent id).
pub const MAX_IDENTIFIER_LEN: usize = 128;
/// Longest display name / subject / project name.
pub const MAX_NAME_LEN: usize = 200;
/// Most end-user members a conversation may have.
pub const MAX_CONVERSATION_MEMBERS: usize = 100;
/// Largest page size for any list endpoint.
pub const MAX_PAGE_LIMIT: u32 = 200;
/// Default page size for list endpoints.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;

/// A message text: non-empty after trimming, at most [`MAX_MESSAGE_TEXT_BYTES`].
pub fn message_text(text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::validation("text must not be empty"));
    }
    if text.len() > MAX_MESSAGE_TEXT_BYTES {
        return Err(ApiError::validation(format!(
            "text must be at most {MAX_MESSAGE_TEXT_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A client-chosen idempotency key: 1–64 chars of `[A-Za-z0-9_:-]`.
pub fn client_msg_id(id: &str) -> Result<(), ApiError> {
    token(id, "client_msg_id", MAX_CLIENT_MSG_ID_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')
    })
}

/// A conversation creation's idempotency key (`idempotency_key`): the rules of
/// [`client_msg_id`], 1–64 chars of `[A-Za-z0-9_:-]`.
pub fn idempotency_key(key: &str) -> Result<(), ApiError> {
    token(key, "idempotency_key", MAX_CLIENT_MSG_ID_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')
    })
}

/// A tenant identifier (their own user id, an agent id): 1–128 printable chars of
/// `[A-Za-z0-9_.@:+-]`. Never used in subjects; stored and compared as is.
pub fn identifier(value: &str, field: &'static str) -> Result<(), ApiError> {
    token(value, field, MAX_IDENTIFIER_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | ':' | '+')
    })
}

/// A display name or title: 1–200 chars, no control characters.
pub fn name(value: &str, field: &'static str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::validation(format!("{field} must not be empty")));
    }
    if value.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::validation(format!(
            "{field} must be at most {MAX_NAME_LEN} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// An email address: loosely checked (one `@`, no spaces, at most 254 bytes).
pub fn email(value: &str) -> Result<(), ApiError> {
    let ok = value.len() <= 254
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(value.split_once('@'), Some((l, d)) if !l.is_empty() && d.contains('.') && !d.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation("email is not a valid address"))
    }
}

/// A URL for an avatar: http(s), at most 2048 bytes.
pub fn url(value: &str, field: &'static str) -> Result<(), ApiError> {
    let ok = value.len() <= 2048
        && (value.starts_with("https://") || value.starts_with("http://"))
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "{field} must be an http(s) URL"
        )))
    }
}

/// A metadata value: a JSON object, at most [`MAX_METADATA_BYTES`] serialized.
pub fn metadata(value: &serde_json::Value) -> Result<(), ApiError> {
    if !value.is_object() {
        return Err(ApiError::validation("metadata must be a JSON object"));
    }
    let len = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if len > MAX_METADATA_BYTES {
        return Err(ApiError::validation(format!(
            "metadata must be at most {MAX_METADATA_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A page size: defaults to [`DEFAULT_PAGE_LIMIT`], must be 1..=[`MAX_PAGE_LIMIT`].
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(l) if (1..=MAX_PAGE_LIMIT).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::validation(format!(
            "limit must be between 1 and {MAX_PAGE_LIMIT}"
        ))),
    }
}

fn token(
    value: &str,
    field: &'static str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > max {
        return Err(ApiError::validation(format!(
            "{field} must be 1 to {max} characters"
        )));
    }
    if !value.chars().all(allowed) {
        return Err(ApiError::validation(format!(
            "{field} contains characters that are not allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_msg_id_rules() {
        assert!(client_msg_id("abc-123_x:y").is_ok());
        assert!(client_msg_id("").is_err());
        assert!(client_msg_id("a.b").is_err());
        assert!(client_msg_id("a*").is_err());
        assert!(client_msg_id("a>").is_err());
        assert!(client_msg_id("a b").is_err());
        assert!(client_msg_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn text_rules() {
        assert!(message_text("hi").is_ok());
        assert!(message_text("   ").is_err());
        assert!(message_text(&"x".repeat(MAX_MESSAGE_TEXT_BYTES + 1)).is_err());
    }

    #[test]
    fn email_rules() {
        assert!(email("a@b.co").is_ok());
        assert!(email("ab.co").is_err());
        assert!(email("a@b@c.co").is_err());
        assert!(email("a @b.co").is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(page_limit(None).unwrap(), DEFAULT_PAGE_LIMIT);
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(MAX_PAGE_LIMIT + 1)).is_err());
    }
}
