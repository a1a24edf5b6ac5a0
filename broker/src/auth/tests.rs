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

fn auth_with(users: &[(&str, &str)], leeway_secs: u64) -> Authenticator {
    let mut cfg = AuthConfig::default();
    cfg.users.insert("alice".into(), "pw-a".into());
    for (u, p) in users {
        cfg.users.insert((*u).into(), (*p).into());
    }
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
        leeway_secs,
        ..Default::default()
    });
    Authenticator::new(&cfg).expect("config")
}

fn auth() -> Authenticator {
    auth_with(&[], 0)
}

/// The principal of a login, or the error.
async fn who(a: &Authenticator, user: &str, pw: &str) -> Result<Principal, AuthError> {
    a.authenticate(user, pw).await.map(|l| l.principal)
}

fn hs(sub: &str, exp: u64) -> String {
    encode(
        &Header::default(),
        &C { sub, exp },
        &EncodingKey::from_secret(b"s3cret").expect("key"),
    )
    .expect("enc")
}

#[tokio::test]
async fn static_users_and_services() {
    let a = auth();
    assert_eq!(
        a.authenticate("alice", "pw-a").await,
        Ok(Login {
            principal: Principal::User("alice".into()),
            expires_at: None
        })
    );
    assert_eq!(
        who(&a, "alice", "nope").await,
        Err(AuthError::BadCredentials)
    );
    assert_eq!(who(&a, "alice", "").await, Err(AuthError::Missing));
    assert!(matches!(
        who(&a, "bridge", "pw-b").await,
        Ok(Principal::Service { .. })
    ));
    assert_eq!(
        who(&a, "bridge", "pw-a").await,
        Err(AuthError::BadCredentials)
    );
    assert_eq!(a.plain_text_accounts(), ["alice", "bridge"]);
}

#[tokio::test]
async fn hashed_static_passwords() {
    let phc = hash_password("frank's pw").expect("hash");
    let a = auth_with(&[("frank", &phc)], 0);
    assert_eq!(
        who(&a, "frank", "frank's pw").await,
        Ok(Principal::User("frank".into()))
    );
    assert_eq!(
        who(&a, "frank", "frank's pw!").await,
        Err(AuthError::BadCredentials)
    );
    assert_eq!(who(&a, "frank", &phc).await, Err(AuthError::BadCredentials));
    assert_eq!(a.plain_text_accounts(), ["alice", "bridge"]);
    // a hashed service account
    let mut cfg = AuthConfig::default();
    cfg.services.insert(
        "pusher".into(),
        ServiceAccount {
            password: phc.clone(),
            allow: vec![],
            client_ids: vec![],
        },
    );
    let a = Authenticator::new(&cfg).expect("config");
    assert!(matches!(
        who(&a, "pusher", "frank's pw").await,
        Ok(Principal::Service { .. })
    ));
    assert!(a.plain_text_accounts().is_empty());
    // a broken hash stops the start instead of becoming a password
    cfg.users.insert("x".into(), "$argon2id$v=19$oops".into());
    assert!(matches!(
        Authenticator::new(&cfg),
        Err(AuthError::Config(_))
    ));
}

#[tokio::test]
async fn a_login_carries_the_tokens_expiry_plus_leeway() {
    let a = auth_with(&[], 7);
    let exp = now() + 60;
    assert_eq!(
        a.authenticate("", &hs("bob", exp)).await,
        Ok(Login {
            principal: Principal::User("bob".into()),
            expires_at: Some(exp + 7)
        })
    );
    // within the leeway a token is still accepted, and ends at exp + leeway
    let exp = now() - 3;
    assert_eq!(
        a.authenticate("", &hs("bob", exp)).await,
        Ok(Login {
            principal: Principal::User("bob".into()),
            expires_at: Some(exp + 7)
        })
    );
    // from the second exp + leeway on, it is refused (jsonwebtoken
    // alone would still take it during that second)
    let exp = now() - 7;
    assert!(matches!(
        a.authenticate("", &hs("bob", exp)).await,
        Err(AuthError::BadToken(_))
    ));
    // an absurd exp does not overflow
    let far = a.authenticate("", &hs("bob", u64::MAX)).await;
    assert_eq!(far.map(|l| l.expires_at), Ok(Some(u64::MAX)));
}

#[tokio::test]
async fn hs256_tokens() {
    let a = auth();
    let good = hs("bob", now() + 60);
    assert_eq!(who(&a, "", &good).await, Ok(Principal::User("bob".into())));
    assert_eq!(
        who(&a, "bob", &good).await,
        Ok(Principal::User("bob".into()))
    );
    assert!(
        who(&a, "carol", &good).await.is_err(),
        "username must match sub"
    );
    assert!(who(&a, "", &hs("bob", now() - 600)).await.is_err());
    let wrong = encode(
        &Header::default(),
        &C {
            sub: "bob",
            exp: now() + 60,
        },
        &EncodingKey::from_secret(b"x").expect("key"),
    )
    .expect("enc");
    assert!(who(&a, "", &wrong).await.is_err());
    assert!(who(&a, "", &hs("a/b", now() + 60)).await.is_err());
    assert!(
        who(&a, "", &hs("bridge", now() + 60)).await.is_err(),
        "a token may not impersonate a service"
    );
}

/// An RSA key pair (rcgen): (private, public) PEM paths in `dir`.
fn rsa_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
    let key = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    std::fs::write(&key, pair.serialize_pem()).expect("write key");
    std::fs::write(&public, pair.public_key_pem()).expect("write public key");
    (key, public)
}

fn rs(key: &Path, sub: &str, exp: u64) -> String {
    let pem = std::fs::read(key).expect("key");
    let enc = EncodingKey::from_rsa_pem(&pem).expect("rsa key");
    encode(&Header::new(Algorithm::RS256), &C { sub, exp }, &enc).expect("enc")
}

#[tokio::test]
async fn rs256_tokens_and_key_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = rsa_pair(dir.path(), "a");
    let cfg = AuthConfig {
        jwt: Some(JwtConfig {
            rs256_public_key: Some(public.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let a = Authenticator::new(&cfg).expect("config");
    let good = rs(&key, "dana", now() + 60);
    assert_eq!(who(&a, "", &good).await, Ok(Principal::User("dana".into())));
    assert!(who(&a, "", &rs(&key, "dana", now() - 600)).await.is_err());
    // an HS256 token is refused when only RS256 is configured
    let hs = encode(
        &Header::default(),
        &C {
            sub: "dana",
            exp: now() + 60,
        },
        &EncodingKey::from_secret(b"x").expect("key"),
    )
    .expect("enc");
    assert!(who(&a, "", &hs).await.is_err());

    // rotation: the reloader starts from the PEM in use
    let (path, pem) = a.rs256_key().expect("rs256 configured");
    assert_eq!(path, public.as_path());
    assert_eq!(pem, std::fs::read(&public).expect("pem").as_slice());
    let (key_b, public_b) = rsa_pair(dir.path(), "b");
    let new = rs(&key_b, "dana", now() + 60);
    assert!(who(&a, "", &new).await.is_err(), "not yet rotated");
    assert!(
        a.set_rs256_key(b"-----BEGIN PUBLIC KEY-----\nnope\n")
            .is_err(),
        "a bad key is refused"
    );
    assert!(who(&a, "", &good).await.is_ok(), "and the old one kept");
    a.set_rs256_key(&std::fs::read(&public_b).expect("pem"))
        .expect("new key");
    assert_eq!(who(&a, "", &new).await, Ok(Principal::User("dana".into())));
    assert!(who(&a, "", &good).await.is_err(), "the old key is gone");
}

#[test]
fn no_rs256_key_to_rotate_without_rs256() {
    let a = auth();
    assert!(a.rs256_key().is_none());
    assert!(a.set_rs256_key(b"").is_err());
}
