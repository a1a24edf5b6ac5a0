//! Authentication: static users, service accounts and JWT (HS256, RS256).
//!
//! The MQTT password carries either a static password or a JWT whose `sub`
//! is the user id. The username may be empty for a JWT; if given, it must
//! equal `sub`. `exp` is required and enforced at CONNECT, and the login
//! carries it (plus the leeway) so the connection is closed when it passes.
//!
//! Static passwords are argon2id PHC strings or plain text; see
//! [`password`] for how they are compared and what a login costs. The RS256
//! public key can be replaced while the server runs ([`Authenticator::set_rs256_key`]).

use crate::config::{AuthConfig, JwtConfig};
use crate::names::valid_id;
use arc_swap::ArcSwapOption;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use password::{Passwords, Secret};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod password;
pub use password::hash as hash_password;

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An end user: topic access per PROTOCOL.md's table.
    User(String),
    /// A configured service (the bridge, hooks consumers): `allow` filters.
    Service { id: String, allow: Vec<String> },
}

impl Principal {
    pub fn id(&self) -> &str {
        match self {
            Principal::User(id) | Principal::Service { id, .. } => id,
        }
    }
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub principal: Principal,
    /// When the credential stops being valid, unix seconds: a JWT's `exp`
    /// plus the configured leeway. `None` for static passwords.
    pub expires_at: Option<u64>,
}

impl Login {
    fn forever(principal: Principal) -> Self {
        Login {
            principal,
            expires_at: None,
        }
    }
}

/// Why a login was refused. Never sent to the client beyond the CONNACK code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("bad username or password")]
    BadCredentials,
    #[error("invalid token: {0}")]
    BadToken(String),
    #[error("auth configuration: {0}")]
    Config(String),
}

struct Jwt {
    hs: Option<DecodingKey>,
    /// Swapped when the key file changes (see `crate::reload`).
    rs: ArcSwapOption<DecodingKey>,
    rs_path: Option<PathBuf>,
    /// The PEM `rs` was made from, so the reloader starts from it.
    rs_pem: Vec<u8>,
    leeway: u64,
    validation_hs: Validation,
    validation_rs: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Checked by jsonwebtoken (required, numeric); kept to end the connection.
    exp: u64,
}

/// Checks logins. Cheap to share behind an `Arc`.
pub struct Authenticator {
    users: HashMap<String, Secret>,
    services: HashMap<String, (Secret, Vec<String>)>,
    passwords: Passwords,
    jwt: Option<Jwt>,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        for id in cfg.users.keys().chain(cfg.services.keys()) {
            if !valid_id(id) {
                return Err(AuthError::Config(format!("invalid user id {id:?}")));
            }
        }
        let passwords = Passwords::new(cfg.password_cache_secs)?;
        let users = cfg
            .users
            .iter()
            .map(|(id, pw)| Ok((id.clone(), passwords.secret(id, pw)?)))
            .collect::<Result<_, AuthError>>()?;
        let services = cfg
            .services
            .iter()
            .map(|(id, v)| {
                let secret = passwords.secret(id, &v.password)?;
                Ok((id.clone(), (secret, v.allow.clone())))
            })
            .collect::<Result<_, AuthError>>()?;
        Ok(Authenticator {
            users,
            services,
            passwords,
            jwt: cfg.jwt.as_ref().map(Jwt::new).transpose()?,
        })
    }

    /// Adds a service account at run time (the in-process bridge's).
    pub fn add_service(
        &mut self,
        id: &str,
        password: &str,
        allow: Vec<String>,
    ) -> Result<(), AuthError> {
        let secret = self.passwords.secret(id, password)?;
        self.services.insert(id.to_owned(), (secret, allow));
        Ok(())
    }

    /// Accounts whose password is configured in plain text, sorted (the
    /// server warns about them at start).
    pub fn plain_text_accounts(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .users
            .iter()
            .filter(|(_, s)| s.is_plain())
            .map(|(id, _)| id.as_str())
            .chain(
                self.services
                    .iter()
                    .filter(|(_, (s, _))| s.is_plain())
                    .map(|(id, _)| id.as_str()),
            )
            .collect();
        v.sort_unstable();
        v
    }

    /// Checks a CONNECT's username and password. A hashed static password
    /// may wait for a verification slot: call it under the connect timeout.
    pub async fn authenticate(&self, username: &str, password: &str) -> Result<Login, AuthError> {
        if password.is_empty() {
            return Err(AuthError::Missing);
        }
        if let Some((secret, allow)) = self.services.get(username) {
            if self.passwords.check(username, secret, password).await? {
                return Ok(Login::forever(Principal::Service {
                    id: username.to_owned(),
                    allow: allow.clone(),
                }));
            }
            return Err(AuthError::BadCredentials);
        }
        if let Some(secret) = self.users.get(username) {
            if self.passwords.check(username, secret, password).await? {
                return Ok(Login::forever(Principal::User(username.to_owned())));
            }
            // fall through: the password may still be a valid JWT for this user
        }
        match self.jwt.as_ref().filter(|_| looks_like_jwt(password)) {
            Some(jwt) => {
                let (sub, exp) = jwt.verify(password)?;
                if !username.is_empty() && username != sub {
                    return Err(AuthError::BadToken("username does not match sub".into()));
                }
                if self.services.contains_key(&sub) {
                    return Err(AuthError::BadToken("sub names a service account".into()));
                }
                // jsonwebtoken accepts a token through the second exp + leeway
                // itself; a connection ends when that second begins, so a
                // login in it would be cut at once: refuse it here.
                let expires_at = exp.saturating_add(jwt.leeway);
                if expires_at <= unix_now() {
                    return Err(AuthError::BadToken("token expired".into()));
                }
                Ok(Login {
                    principal: Principal::User(sub),
                    expires_at: Some(expires_at),
                })
            }
            None => Err(AuthError::BadCredentials),
        }
    }

    /// The RS256 public key file and the PEM in use, if RS256 is configured.
    pub fn rs256_key(&self) -> Option<(&Path, &[u8])> {
        let jwt = self.jwt.as_ref()?;
        Some((jwt.rs_path.as_deref()?, &jwt.rs_pem))
    }

    /// Replaces the RS256 public key (tokens checked from now on use it).
    /// A PEM that is not an RSA public key is refused and the old key kept.
    pub fn set_rs256_key(&self, pem: &[u8]) -> Result<(), AuthError> {
        let jwt = self
            .jwt
            .as_ref()
            .filter(|j| j.rs_path.is_some())
            .ok_or_else(|| AuthError::Config("RS256 is not configured".into()))?;
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| AuthError::Config(e.to_string()))?;
        jwt.rs.store(Some(Arc::new(key)));
        Ok(())
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn looks_like_jwt(s: &str) -> bool {
    s.split('.').count() == 3
}

impl Jwt {
    fn new(cfg: &JwtConfig) -> Result<Self, AuthError> {
        let hs = cfg
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()))
            .transpose()
            .map_err(|e| AuthError::Config(format!("hs256_secret: {e}")))?;
        let (rs, rs_pem) = match &cfg.rs256_public_key {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?;
                (Some(Arc::new(key)), pem)
            }
            None => (None, Vec::new()),
        };
        if hs.is_none() && rs.is_none() {
            return Err(AuthError::Config(
                "jwt needs hs256_secret or rs256_public_key".into(),
            ));
        }
        let mk = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = cfg.leeway_secs;
            v.set_required_spec_claims(&["exp", "sub"]);
            v.validate_exp = true;
            if let Some(iss) = &cfg.issuer {
                v.set_issuer(&[iss]);
            }
            match &cfg.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            v
        };
        Ok(Jwt {
            hs,
            rs: ArcSwapOption::new(rs),
            rs_path: cfg.rs256_public_key.clone(),
            rs_pem,
            leeway: cfg.leeway_secs,
            validation_hs: mk(Algorithm::HS256),
            validation_rs: mk(Algorithm::RS256),
        })
    }

    /// `sub` and `exp` of a valid token.
    fn verify(&self, token: &str) -> Result<(String, u64), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::BadToken(e.to_string()))?;
        let rs;
        let (key, validation) = match header.alg {
            Algorithm::HS256 => (self.hs.as_ref(), &self.validation_hs),
            Algorithm::RS256 => {
                rs = self.rs.load_full();
                (rs.as_deref(), &self.validation_rs)
            }
            other => {
                return Err(AuthError::BadToken(format!(
                    "algorithm {other:?} not accepted"
                )))
            }
        };
        let key = key.ok_or_else(|| AuthError::BadToken("algorithm not configured".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| AuthError::BadToken(e.to_string()))?;
        if !valid_id(&data.claims.sub) {
            return Err(AuthError::BadToken("sub is not a valid user id".into()));
        }
        Ok((data.claims.sub, data.claims.exp))
    }
}

#[cfg(test)]
mod tests;
