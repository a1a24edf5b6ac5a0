//! Authentication: static users, service accounts and JWT (HS256, RS256).
//!
//! The MQTT password carries either a static password or a JWT whose `sub`
//! is the user id. The username may be empty for a JWT; if given, it must
//! equal `sub`. `exp` is required and enforced.

use crate::config::{AuthConfig, JwtConfig};
use crate::names::valid_id;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use subtle_eq::ct_eq;

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
    rs: Option<DecodingKey>,
    validation_hs: Validation,
    validation_rs: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Checks logins. Cheap to share behind an `Arc`.
pub struct Authenticator {
    users: HashMap<String, String>,
    services: HashMap<String, (String, Vec<String>)>,
    jwt: Option<Jwt>,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        for id in cfg.users.keys().chain(cfg.services.keys()) {
            if !valid_id(id) {
                return Err(AuthError::Config(format!("invalid user id {id:?}")));
            }
        }
        Ok(Authenticator {
            users: cfg.users.clone(),
            services: cfg
                .services
                .iter()
                .map(|(k, v)| (k.clone(), (v.password.clone(), v.allow.clone())))
                .collect(),
            jwt: cfg.jwt.as_ref().map(Jwt::new).transpose()?,
        })
    }

    /// Adds a service account at run time (the in-process bridge's).
    pub fn add_service(&mut self, id: &str, password: &str, allow: Vec<String>) {
        self.services
            .insert(id.to_owned(), (password.to_owned(), allow));
    }

    pub fn authenticate(&self, username: &str, password: &str) -> Result<Principal, AuthError> {
        if password.is_empty() {
            return Err(AuthError::Missing);
        }
        if let Some((pw, allow)) = self.services.get(username) {
            if ct_eq(pw.as_bytes(), password.as_bytes()) {
                return Ok(Principal::Service {
                    id: username.to_owned(),
                    allow: allow.clone(),
                });
            }
            return Err(AuthError::BadCredentials);
        }
        if let Some(pw) = self.users.get(username) {
            if ct_eq(pw.as_bytes(), password.as_bytes()) {
                return Ok(Principal::User(username.to_owned()));
            }
            // fall through: the password may still be a valid JWT for this user
        }
        match &self.jwt {
            Some(jwt) if looks_like_jwt(password) => {
                let sub = jwt.verify(password)?;
                if !username.is_empty() && username != sub {
                    return Err(AuthError::BadToken("username does not match sub".into()));
                }
                if self.services.contains_key(&sub) {
                    return Err(AuthError::BadToken("sub names a service account".into()));
                }
                Ok(Principal::User(sub))
            }
            _ => Err(AuthError::BadCredentials),
        }
    }
}

fn looks_like_jwt(s: &str) -> bool {
    s.split('.').count() == 3
}

impl Jwt {
    fn new(cfg: &JwtConfig) -> Result<Self, AuthError> {
        let hs = cfg
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let rs = match &cfg.rs256_public_key {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?;
                Some(
                    DecodingKey::from_rsa_pem(&pem)
                        .map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?,
                )
            }
            None => None,
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
            rs,
            validation_hs: mk(Algorithm::HS256),
            validation_rs: mk(Algorithm::RS256),
        })
    }

    fn verify(&self, token: &str) -> Result<String, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::BadToken(e.to_string()))?;
        let (key, validation) = match header.alg {
            Algorithm::HS256 => (self.hs.as_ref(), &self.validation_hs),
            Algorithm::RS256 => (self.rs.as_ref(), &self.validation_rs),
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
        Ok(data.claims.sub)
    }
}

/// Constant-time comparison, so a password check leaks no timing.
mod subtle_eq {
    pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceAccount;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    #[derive(Serialize)]
    struct C<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn auth() -> Authenticator {
        let mut cfg = AuthConfig::default();
        cfg.users.insert("alice".into(), "pw-a".into());
        cfg.services.insert(
            "bridge".into(),
            ServiceAccount {
                password: "pw-b".into(),
                allow: vec!["chat/#".into()],
                client_ids: Vec::new(),
            },
        );
        cfg.jwt = Some(JwtConfig {
            hs256_secret: Some("s3cret".into()),
            ..Default::default()
        });
        Authenticator::new(&cfg).expect("config")
    }

    #[test]
    fn static_users_and_services() {
        let a = auth();
        assert_eq!(
            a.authenticate("alice", "pw-a"),
            Ok(Principal::User("alice".into()))
        );
        assert_eq!(
            a.authenticate("alice", "nope"),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(a.authenticate("alice", ""), Err(AuthError::Missing));
        assert!(matches!(
            a.authenticate("bridge", "pw-b"),
            Ok(Principal::Service { .. })
        ));
        assert_eq!(
            a.authenticate("bridge", "pw-a"),
            Err(AuthError::BadCredentials)
        );
    }

    #[test]
    fn hs256_tokens() {
        let a = auth();
        let key = EncodingKey::from_secret(b"s3cret");
        let good = encode(
            &Header::default(),
            &C {
                sub: "bob",
                exp: now() + 60,
            },
            &key,
        )
        .expect("enc");
        assert_eq!(a.authenticate("", &good), Ok(Principal::User("bob".into())));
        assert_eq!(
            a.authenticate("bob", &good),
            Ok(Principal::User("bob".into()))
        );
        assert!(
            a.authenticate("carol", &good).is_err(),
            "username must match sub"
        );
        let expired = encode(
            &Header::default(),
            &C {
                sub: "bob",
                exp: now() - 600,
            },
            &key,
        )
        .expect("enc");
        assert!(a.authenticate("", &expired).is_err());
        let wrong = encode(
            &Header::default(),
            &C {
                sub: "bob",
                exp: now() + 60,
            },
            &EncodingKey::from_secret(b"x"),
        )
        .expect("enc");
        assert!(a.authenticate("", &wrong).is_err());
        let bad_sub = encode(
            &Header::default(),
            &C {
                sub: "a/b",
                exp: now() + 60,
            },
            &key,
        )
        .expect("enc");
        assert!(a.authenticate("", &bad_sub).is_err());
        let svc = encode(
            &Header::default(),
            &C {
                sub: "bridge",
                exp: now() + 60,
            },
            &key,
        )
        .expect("enc");
        assert!(
            a.authenticate("", &svc).is_err(),
            "a token may not impersonate a service"
        );
    }

    #[test]
    fn rs256_tokens() {
        let dir = std::env::temp_dir().join(format!("chatmq-rs256-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let key = dir.join("k.pem");
        let public = dir.join("p.pem");
        let gen = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .status();
        if !gen.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED rs256_tokens: the openssl command is not available to make a key");
            return;
        }
        let ok = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "openssl pkey -pubout failed");
        let cfg = AuthConfig {
            jwt: Some(JwtConfig {
                rs256_public_key: Some(public),
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = Authenticator::new(&cfg).expect("config");
        let pem = std::fs::read(&key).expect("key");
        let enc = EncodingKey::from_rsa_pem(&pem).expect("rsa key");
        let good = encode(
            &Header::new(Algorithm::RS256),
            &C {
                sub: "dana",
                exp: now() + 60,
            },
            &enc,
        )
        .expect("enc");
        assert_eq!(
            a.authenticate("", &good),
            Ok(Principal::User("dana".into()))
        );
        let expired = encode(
            &Header::new(Algorithm::RS256),
            &C {
                sub: "dana",
                exp: now() - 600,
            },
            &enc,
        )
        .expect("enc");
        assert!(a.authenticate("", &expired).is_err());
        // an HS256 token is refused when only RS256 is configured
        let hs = encode(
            &Header::default(),
            &C {
                sub: "dana",
                exp: now() + 60,
            },
            &EncodingKey::from_secret(b"x"),
        )
        .expect("enc");
        assert!(a.authenticate("", &hs).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
