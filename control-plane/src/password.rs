//! Admin passwords: argon2id hashing, login verification, and the first admin.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$…`) with the argon2 crate's default
//! parameters (OWASP's minimum for argon2id). Hashing and verifying run on the blocking pool,
//! never on the async workers, and login checks go through a [`Pool`]: one argon2 run per
//! core at a time (each takes ~19 MiB and a core for tens of milliseconds), a short bounded
//! queue behind them, and `503 unavailable` (with `Retry-After`) for a login that finds the
//! queue full — so a flood of failed logins costs bounded memory and CPU, never a growing
//! backlog of 19 MiB buffers.
//!
//! Login never tells whether an email exists: an unknown email is verified against a dummy
//! hash with the same parameters, so both failures cost one argon2 run and answer the same
//! 401.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use larachat_core::model::AdminUser;
use larachat_core::{AdminUserId, ApiError, ErrorCode, validate};
use larachat_store::{Store, StoreError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{ControlPlane, telemetry};

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

/// Bounds the argon2 work of logins: `slots` checks run at once, at most `queue` more wait
/// for a slot, and any further login is refused at once instead of queueing without bound.
#[derive(Debug)]
pub struct Pool {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// The pool and its queue are full: answer 503 without checking the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolFull;

/// A place in the wait queue, given back on drop (also when the waiting request is dropped).
struct Waiting<'a>(&'a AtomicUsize);

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

impl Pool {
    /// `slots` concurrent checks (at least 1) and a queue of `queue` waiting ones.
    pub fn new(slots: usize, queue: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            waiting: AtomicUsize::new(0),
            queue,
        }
    }

    /// One slot per core (at most 16), and four waiting logins per slot.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 16);
        Self::new(cores, 4 * cores)
    }

    /// A slot for one argon2 run: at once if one is free, after a wait if the queue has room,
    /// otherwise [`PoolFull`].
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, PoolFull> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(PoolFull);
        }
        let _place = Waiting::enter(&self.waiting);
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolFull)
    }
}

impl<'a> Waiting<'a> {
    /// Takes the place already counted in `waiting`.
    fn enter(waiting: &'a AtomicUsize) -> Self {
        metrics::gauge!(telemetry::PASSWORD_CHECKS_WAITING).increment(1.0);
        Self(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(telemetry::PASSWORD_CHECKS_WAITING).decrement(1.0);
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
    let permit = cp.password_pool().acquire().await.map_err(|PoolFull| {
        telemetry::login_refused();
        ApiError::new(
            ErrorCode::Unavailable,
            "too many logins in progress; try again in a moment",
        )
    })?;
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

/// Hashes a new admin password on the blocking pool, through the argon2 [`Pool`] (503 when it
/// is full, like a login). The caller checks [`check_password_rule`] first.
pub(crate) async fn hash_new_password(
    cp: &ControlPlane,
    password: String,
) -> Result<String, ApiError> {
    let permit = cp.password_pool().acquire().await.map_err(|PoolFull| {
        telemetry::login_refused();
        ApiError::new(
            ErrorCode::Unavailable,
            "too many logins in progress; try again in a moment",
        )
    })?;
    tokio::task::spawn_blocking(move || {
        let hashed = hash_password(&password);
        drop(permit);
        hashed
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "password hashing task failed");
        ApiError::internal()
    })?
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

    #[tokio::test]
    async fn the_pool_queues_a_bounded_number_and_refuses_the_rest() {
        let pool = Arc::new(Pool::new(1, 2));
        let running = pool.acquire().await.expect("a free slot");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut queued = Vec::new();
        for _ in 0..2 {
            let (pool, tx) = (pool.clone(), tx.clone());
            queued.push(tokio::spawn(async move {
                let p = pool.acquire().await;
                let _ = tx.send(p.is_ok());
                // Hold the slot briefly so the next waiter sees it taken.
                drop(p);
            }));
        }
        // Both waiters are queued once the counter says so (no sleeps: poll the counter).
        while pool.waiting.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.acquire().await.err(), Some(PoolFull), "queue full");
        drop(running);
        assert_eq!(rx.recv().await, Some(true));
        assert_eq!(rx.recv().await, Some(true));
        for q in queued {
            q.await.unwrap();
        }
        assert_eq!(pool.waiting.load(Ordering::Acquire), 0);
        let dropped = {
            let _held = pool.acquire().await.unwrap();
            // A waiter that gives up (client gone) frees its queue place.
            let w = tokio::time::timeout(std::time::Duration::from_millis(1), pool.acquire()).await;
            w.is_err()
        };
        assert!(dropped);
        assert_eq!(pool.waiting.load(Ordering::Acquire), 0);
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
