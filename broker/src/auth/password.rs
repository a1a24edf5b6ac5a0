//! Static passwords (users and service accounts): argon2id PHC strings, or
//! plain text (warned about at start).
//!
//! - A plain password is kept only as an HMAC-SHA256 under a key made at
//!   start, and a candidate's HMAC is compared with `subtle` in constant
//!   time: neither the content nor the length of the password leaks.
//! - An argon2id hash is verified on the blocking pool, at most
//!   [`verifiers`] at once (each takes the hash's `m` KiB of memory and a
//!   core for tens of milliseconds), so a reconnect storm or a password
//!   guesser costs a bounded share of the machine and never blocks the
//!   async workers.
//! - A successful verification is remembered for `password_cache_secs` as
//!   the HMAC of (account, password): a client that reconnects within that
//!   time (a network blip, a flapping mobile link) costs one HMAC instead
//!   of one argon2 run. One entry per hashed account at most, so the cache
//!   is bounded by the configuration. The hashes are not reloaded while the
//!   server runs, so an entry can never outlive its password.

use super::AuthError;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::PasswordVerifier;
use argon2::{Algorithm, Argon2, Params};
use aws_lc_rs::hmac;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Largest argon2 memory cost accepted in a configured hash, KiB. Each
/// verification running at once holds this much.
pub(super) const MAX_M_COST_KIB: u32 = 256 * 1024;

/// How a static account's password is stored.
pub(super) enum Secret {
    /// HMAC of a plain-text password.
    Plain(hmac::Tag),
    /// A validated argon2id PHC string.
    Argon2id(Arc<str>),
}

impl Secret {
    /// Whether the configured value is plain text.
    pub(super) fn is_plain(&self) -> bool {
        matches!(self, Secret::Plain(_))
    }
}

/// Whether a configured password value is meant as a hash (`$argon2...`).
/// Such a value is never taken as plain text, even if it does not parse.
pub(super) fn looks_hashed(value: &str) -> bool {
    value.starts_with("$argon2")
}

/// Checks static passwords; see the module doc.
pub(super) struct Passwords {
    key: hmac::Key,
    permits: tokio::sync::Semaphore,
    /// account -> (HMAC of account and password, when verified)
    cache: Mutex<HashMap<String, (hmac::Tag, Instant)>>,
    ttl: Duration,
}

/// How many argon2 verifications run at once: half the cores (at least
/// one), so the broker's own work always has CPU left.
pub(super) fn verifiers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

impl Passwords {
    pub(super) fn new(cache_secs: u64) -> Result<Self, AuthError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| AuthError::Config("no system randomness".into()))?;
        Ok(Passwords {
            key,
            permits: tokio::sync::Semaphore::new(verifiers()),
            cache: Mutex::new(HashMap::new()),
            ttl: Duration::from_secs(cache_secs),
        })
    }

    /// Parses a configured password of `account`: an argon2id PHC string
    /// (validated here, so a typo is a start-up error, not a password), or
    /// plain text.
    pub(super) fn secret(&self, account: &str, value: &str) -> Result<Secret, AuthError> {
        if !looks_hashed(value) {
            return Ok(Secret::Plain(hmac::sign(&self.key, value.as_bytes())));
        }
        let bad = |why: String| AuthError::Config(format!("password hash of {account:?}: {why}"));
        let hash = PasswordHash::new(value).map_err(|e| bad(e.to_string()))?;
        if hash.algorithm != Algorithm::Argon2id.ident() {
            return Err(bad(format!(
                "{} is not accepted, only argon2id",
                hash.algorithm
            )));
        }
        if hash.salt.is_none() || hash.hash.is_none() {
            return Err(bad("no salt or no hash".into()));
        }
        let params = Params::try_from(&hash).map_err(|e| bad(e.to_string()))?;
        if params.m_cost() > MAX_M_COST_KIB {
            return Err(bad(format!(
                "m={} KiB is over the {MAX_M_COST_KIB} KiB this server allows per login",
                params.m_cost()
            )));
        }
        Ok(Secret::Argon2id(Arc::from(value)))
    }

    /// Whether `password` is `account`'s. `Err` only when the server could
    /// not check (the blocking pool is gone).
    pub(super) async fn check(
        &self,
        account: &str,
        secret: &Secret,
        password: &str,
    ) -> Result<bool, AuthError> {
        let phc = match secret {
            Secret::Plain(tag) => {
                let got = hmac::sign(&self.key, password.as_bytes());
                return Ok(ct_eq(got.as_ref(), tag.as_ref()));
            }
            Secret::Argon2id(phc) => phc.clone(),
        };
        let tag = self.tag(account, password);
        if self.cached(account, &tag) {
            return Ok(true);
        }
        let ok = {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| AuthError::Config("password checks closed".into()))?;
            let password = password.to_owned();
            tokio::task::spawn_blocking(move || verify(&phc, &password))
                .await
                .map_err(|e| AuthError::Config(format!("password check: {e}")))?
        };
        if ok && !self.ttl.is_zero() {
            self.cache
                .lock()
                .insert(account.to_owned(), (tag, Instant::now()));
        }
        Ok(ok)
    }

    fn tag(&self, account: &str, password: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        // the account id cannot hold a NUL: the pair is unambiguous
        ctx.update(account.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        ctx.sign()
    }

    fn cached(&self, account: &str, tag: &hmac::Tag) -> bool {
        let mut cache = self.cache.lock();
        match cache.get(account) {
            Some((_, at)) if at.elapsed() >= self.ttl => {
                cache.remove(account);
                false
            }
            Some((known, _)) => ct_eq(known.as_ref(), tag.as_ref()),
            None => false,
        }
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// One argon2 verification (CPU and memory bound: call it off the async workers).
fn verify(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// A new argon2id PHC string for `password` with a random salt and the
/// crate's default parameters (argon2id v19, m=19456 KiB, t=2, p=1: the
/// OWASP recommendation, ~20-50 ms of one core).
pub fn hash(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    let salt = argon2::password_hash::try_generate_salt()
        .map_err(|e| format!("no system randomness: {e}"))?;
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_and_hashed_passwords() {
        let p = Passwords::new(60).expect("passwords");
        let plain = p.secret("a", "pw-a").expect("plain");
        assert!(plain.is_plain());
        assert!(p.check("a", &plain, "pw-a").await.expect("check"));
        assert!(!p.check("a", &plain, "pw-b").await.expect("check"));
        assert!(!p.check("a", &plain, "pw-a ").await.expect("check"));
        assert!(!p.check("a", &plain, "").await.expect("check"));

        let phc = hash("s3cret").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        let hashed = p.secret("b", &phc).expect("hashed");
        assert!(!hashed.is_plain());
        assert!(!p.check("b", &hashed, "wrong").await.expect("check"));
        assert!(
            !p.check("b", &hashed, &phc).await.expect("check"),
            "the hash itself is not the password"
        );
        assert!(p.check("b", &hashed, "s3cret").await.expect("check"));
        // now cached: the right password still passes, a wrong one still fails
        assert!(p.check("b", &hashed, "s3cret").await.expect("check"));
        assert!(!p.check("b", &hashed, "s3cre").await.expect("check"));
        // the cache is per account: another account with the same hash is verified on its own
        let other = p.secret("c", &phc).expect("hashed");
        assert!(!p.check("c", &other, "x").await.expect("check"));
    }

    #[tokio::test]
    async fn cache_entries_expire() {
        let p = Passwords::new(0).expect("passwords");
        let phc = hash("pw").expect("hash");
        let s = p.secret("a", &phc).expect("hashed");
        assert!(p.check("a", &s, "pw").await.expect("check"));
        assert!(p.cache.lock().is_empty(), "ttl 0 keeps nothing");
        let p = Passwords::new(60).expect("passwords");
        assert!(p.check("a", &s, "pw").await.expect("check"));
        assert_eq!(p.cache.lock().len(), 1);
        p.cache
            .lock()
            .values_mut()
            .for_each(|(_, at)| *at -= Duration::from_secs(61));
        assert!(!p.cached("a", &p.tag("a", "pw")), "stale entry is not used");
        assert!(p.cache.lock().is_empty(), "stale entry is dropped");
    }

    #[test]
    fn bad_hashes_are_config_errors() {
        let p = Passwords::new(60).expect("passwords");
        let phc = hash("pw").expect("hash");
        // a typo in a hash must not turn it into a plain password
        for bad in [
            "$argon2id$v=19$m=19456,t=2,p=1$bad",
            "$argon2id$",
            &phc.replacen("argon2id", "argon2i", 1),
            &phc.replacen("argon2id", "argon2d", 1),
            &phc.replacen("m=19456", "m=1048576", 1),
        ] {
            assert!(
                matches!(p.secret("a", bad), Err(AuthError::Config(_))),
                "{bad} accepted"
            );
        }
        assert!(p.secret("a", "$2b$10$notargon").is_ok_and(|s| s.is_plain()));
    }
}
