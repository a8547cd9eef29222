//! Admin passwords: argon2id hashing, login verification, and the first admin.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$…`) with the argon2 crate's default
//! parameters (OWASP's minimum for argon2id). Hashing and verifying run on the blocking pool,
//! never on the async workers.
//!
//! Login never tells whether an email exists: an unknown email is verified against a dummy
//! hash with the same parameters, so both failures cost one argon2 run and answer the same
//! 401.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use larachat_core::model::AdminUser;
use larachat_core::{AdminUserId, ApiError, validate};
use larachat_store::{Store, StoreError};

use crate::ControlPlane;

/// Shortest password accepted for an admin, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted for an admin, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Result of [`bootstrap_admin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapOutcome {
    /// A new admin was created with the given password.
    Created(AdminUserId),
    /// An admin with this email already existed; its password was left untouched.
    AlreadyExists(AdminUserId),
}

static DUMMY_HASH: OnceLock<String> = OnceLock::new();

/// Creates the admin `email` with `password`, unless an admin with that email exists (then
/// nothing changes: a restart with the bootstrap variables still set never resets a password).
///
/// Used by the binary on first start (`LARACHAT_ADMIN_EMAIL` / `LARACHAT_ADMIN_PASSWORD`) and
/// by `larachat admin create-user`. Emails are trimmed and lower-cased. Fails with
/// `validation_failed` for a bad email or a password shorter than [`MIN_PASSWORD_CHARS`]
/// characters (or longer than [`MAX_PASSWORD_BYTES`] bytes).
pub async fn bootstrap_admin(
    store: &dyn Store,
    email: &str,
    password: &str,
) -> Result<BootstrapOutcome, ApiError> {
    let email = normalize_email(email);
    validate::email(&email)?;
    check_password_rule(password)?;
    if let Some(existing) = store
        .admin_user_by_email(&email)
        .await
        .map_err(store_error)?
    {
        return Ok(BootstrapOutcome::AlreadyExists(existing.id));
    }
    let password = password.to_owned();
    let password_hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "password hashing task failed");
            ApiError::internal()
        })??;
    let user = AdminUser {
        id: AdminUserId::new_v7(),
        email: email.clone(),
        password_hash,
        created_at: larachat_core::model::now(),
    };
    match store.create_admin_user(&user).await {
        Ok(()) => {
            tracing::info!(admin_id = %user.id, "admin user created");
            Ok(BootstrapOutcome::Created(user.id))
        }
        // Another process created it between our lookup and insert: theirs stands.
        Err(StoreError::Conflict(_)) => match store.admin_user_by_email(&email).await {
            Ok(Some(existing)) => Ok(BootstrapOutcome::AlreadyExists(existing.id)),
            Ok(None) => Err(ApiError::conflict(
                "an admin with this email already exists",
            )),
            Err(e) => Err(store_error(e)),
        },
        Err(e) => Err(store_error(e)),
    }
}

/// The password rule for admins.
pub fn check_password_rule(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::validation(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::validation(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Emails are compared trimmed and lower-cased, so `Ana@Example.com ` logs in as
/// `ana@example.com`.
pub(crate) fn normalize_email(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

/// Computes the dummy hash once per process (one argon2 run).
pub(crate) fn prepare_dummy_hash() {
    let _ = dummy_hash();
}

fn dummy_hash() -> &'static str {
    DUMMY_HASH.get_or_init(|| {
        let mut random = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut random[..]);
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        // Hashing a 64-character string with a fresh salt cannot fail; if it ever did, an
        // unparsable dummy still costs no less than a real verify would (see `verify`).
        hash_password(&password).unwrap_or_default()
    })
}

/// Checks `email`/`password` and returns the admin on success. `Ok(None)` for a wrong email or
/// a wrong password alike, after the same amount of work.
pub(crate) async fn check_login(
    cp: &ControlPlane,
    email: &str,
    password: String,
) -> Result<Option<AdminUser>, ApiError> {
    let email = normalize_email(email);
    let user = if email.len() <= 254 {
        cp.store()
            .admin_user_by_email(&email)
            .await
            .map_err(store_error)?
    } else {
        None
    };
    let hash = user
        .as_ref()
        .map_or_else(|| dummy_hash().to_owned(), |u| u.password_hash.clone());
    // The permit moves into the blocking task: if the client goes away, the argon2 run still
    // holds its slot until it really ends.
    let permit = cp
        .password_slots()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable())?;
    let matches = tokio::task::spawn_blocking(move || {
        let matches = verify(&password, &hash);
        drop(permit);
        matches
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "password verification task failed");
        ApiError::internal()
    })?;
    Ok(user.filter(|_| matches))
}

fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| {
            tracing::error!(error = %e, "argon2 hashing failed");
            ApiError::internal()
        })
}

fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "stored admin password hash is not a valid PHC string");
            false
        }
    }
}

fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store failed on an admin user");
    e.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterY", &h));
        assert!(!verify("anything", "not a phc string"));
    }

    #[test]
    fn dummy_hash_costs_what_a_real_one_costs() {
        let real = PasswordHash::new(&hash_password("some password!").unwrap())
            .map(|p| p.params.to_string())
            .unwrap();
        let dummy = PasswordHash::new(dummy_hash())
            .map(|p| p.params.to_string())
            .unwrap();
        assert_eq!(real, dummy);
    }

    #[test]
    fn password_rule() {
        assert!(check_password_rule("123456789").is_err());
        assert!(check_password_rule("1234567890").is_ok());
        assert!(
            check_password_rule("ééééééééé").is_err(),
            "characters, not bytes"
        );
        assert!(check_password_rule(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }
}
