//! See `hostile.rs`. Credentials over time: a JWT's connection ends when the
//! token expires; static passwords are argon2id hashes; the TLS certificate
//! and the JWT RS256 key are replaced while the server runs, without
//! dropping anyone.

use anyhow::{anyhow, bail, Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::*;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An HS256 token for the test server's secret.
fn hs256(sub: &str, exp: u64) -> Result<String> {
    let claims = json!({ "sub": sub, "exp": exp });
    Ok(jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"test-secret")?,
    )?)
}

/// An RS256 token signed with the PEM private key at `key`.
fn rs256(key: &Path, sub: &str, exp: u64) -> Result<String> {
    let enc = EncodingKey::from_rsa_pem(&std::fs::read(key)?)?;
    let claims = json!({ "sub": sub, "exp": exp });
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &enc,
    )?)
}

/// Waits until `c`'s connection has ended; the client library's reason.
async fn closed(c: &mut Client, within: Duration) -> Result<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(why) = c.is_closed() {
            return Ok(why);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{}: still connected after {within:?}", c.client_id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A token with `exp` a few seconds ahead logs in over 3.1.1 and 5; when
/// `exp` + leeway passes the server closes both (v5: DISCONNECT 0xA0,
/// maximum connect time), publishes the will of the 3.1.1 one, and refuses
/// the old token; fresh tokens reconnect, and a user with a long token and
/// a static user were served all along.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_jwt_loses_its_connection() -> Result<()> {
    let srv = TestServer::builder()
        .jwt_toml("leeway_secs = 1")
        .start()
        .await?;
    let port = srv.tcp_port();
    let mut alice = srv.user_v4("alice", "alice-watch").await?;
    alice.subscribe_ok("devices/frank/status").await?;
    let long = hs256("heidi", now() + 3600)?;
    let mut heidi = client_v5(port, "heidi", &long, "heidi-long").await?;
    heidi.subscribe_own().await?;

    let exp = now() + 4;
    let frank_token = hs256("frank", exp)?;
    let mut opts = rumqttc::MqttOptions::new("frank-exp", "127.0.0.1", port);
    opts.set_credentials("frank", &frank_token);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_last_will(rumqttc::LastWill::new(
        "devices/frank/status",
        "gone",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let mut frank = client_v4_with(opts, "frank").await?;
    frank.subscribe_own().await?;
    let grace_token = hs256("grace", exp)?;
    let mut grace = client_v5(port, "grace", &grace_token, "grace-exp").await?;
    grace.subscribe_own().await?;
    frank.rpc("rooms.list", json!({})).await?;
    grace.rpc("rooms.list", json!({})).await?;

    // exp + leeway (1 s) is at most 5 s away
    let within = Duration::from_secs(5) + TIMEOUT;
    let why4 = closed(&mut frank, within).await?;
    let why5 = closed(&mut grace, within).await?;
    assert!(
        why5.contains("MaximumConnectTime"),
        "v5 is told why: {why5}"
    );
    eprintln!("3.1.1 client saw: {why4}");
    // the server ended the connection, not the client: its will is published
    let will = alice
        .recv_until("frank's will", TIMEOUT, |m| {
            m.topic == "devices/frank/status"
        })
        .await?;
    assert_eq!(&will.payload[..], b"gone");

    // the expired token no longer logs in; fresh ones do
    let again = client_v4(port, "frank", &frank_token, "frank-exp").await;
    assert!(again.is_err(), "an expired token is refused at CONNECT");
    let mut frank = client_v4(port, "frank", &hs256("frank", now() + 3600)?, "frank-exp").await?;
    frank.subscribe_own().await?;
    frank.rpc("rooms.list", json!({})).await?;
    let mut grace = client_v5(port, "grace", &hs256("grace", now() + 3600)?, "grace-exp").await?;
    grace.subscribe_own().await?;
    grace.rpc("rooms.list", json!({})).await?;

    // the innocent were served throughout
    assert_eq!(
        heidi.is_closed(),
        None,
        "a valid token keeps its connection"
    );
    heidi.rpc("rooms.list", json!({})).await?;
    assert_eq!(alice.is_closed(), None);
    alice.rpc("rooms.list", json!({})).await?;
    let (_, metrics) = srv.http_get("/metrics").await?;
    assert_eq!(metric(&metrics, "chatmq_credentials_expired_total"), 2.0);
    Ok(())
}

/// `chatmq hash-password`: the password on stdin, the PHC string on stdout.
async fn hash_password(password: &str) -> Result<String> {
    let bin = chatmq_bin()?;
    let mut child = tokio::process::Command::new(bin)
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(format!("{password}\n").as_bytes()).await?;
    }
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output()).await??;
    if !out.status.success() {
        bail!(
            "chatmq hash-password: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A static user configured with an argon2id hash (made by `chatmq
/// hash-password`) logs in with the password, over 3.1.1 and 5; a wrong
/// password and the hash itself are refused; others are served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_hashed_static_password_logs_in() -> Result<()> {
    let password = "ivan's $ecret \"pw\"";
    let phc = hash_password(password).await?;
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    let srv = TestServer::builder().user("ivan", &phc).start().await?;
    let port = srv.tcp_port();
    let mut ivan = client_v4(port, "ivan", password, "ivan-4").await?;
    ivan.subscribe_own().await?;
    ivan.rpc("rooms.list", json!({})).await?;
    let mut ivan5 = client_v5(port, "ivan", password, "ivan-5").await?;
    ivan5.subscribe_own().await?;

    for wrong in ["ivan's $ecret", phc.as_str(), ""] {
        let r = client_v4(port, "ivan", wrong, "ivan-x").await;
        let e = r
            .err()
            .ok_or_else(|| anyhow!("password {wrong:?} was accepted"))?;
        assert!(
            format!("{e:#}").contains("BadUserNamePassword"),
            "refused as bad credentials: {e:#}"
        );
    }
    // the innocent: ivan's sessions and another user are still served
    let mut bob = srv.user_v4("bob", "bob-hash").await?;
    bob.rpc("rooms.list", json!({})).await?;
    ivan.rpc("rooms.list", json!({})).await?;
    ivan5.rpc("rooms.list", json!({})).await?;
    Ok(())
}

/// A directory laid out as Kubernetes mounts a Secret: `dir/name` ->
/// `..data/name`, `..data` -> a versioned directory, swapped atomically.
struct Mounted {
    dir: PathBuf,
    version: u32,
}

impl Mounted {
    fn new(dir: &Path) -> Self {
        Mounted {
            dir: dir.to_path_buf(),
            version: 0,
        }
    }

    /// Publishes a new version of the files (name, contents).
    #[cfg(unix)]
    fn publish(&mut self, files: &[(&str, &[u8])]) -> Result<()> {
        self.version += 1;
        let v = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&v))?;
        for (name, bytes) in files {
            std::fs::write(self.dir.join(&v).join(name), bytes)?;
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
            }
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&v, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data"))?;
        Ok(())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// An MQTT 3.1.1 client (rumqttc) over TLS that trusts only `ca`: a
/// [`pki::TlsFront`] of its own carries the connection, so the TLS client is
/// rustls on the process's one crypto provider.
async fn tls_client(port: u16, ca: &[u8], user: &str, client_id: &str) -> Result<Client> {
    let front = pki::TlsFront::start(port, ca).await?;
    let port = front.port();
    let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_credentials(user, pw(user));
    opts.set_keep_alive(Duration::from_secs(30));
    // dropping the front stops its accept loop; the connection carried
    // already runs on in a task of its own
    client_v4_with(opts, user).await
}

/// Retries `connect` until it succeeds (the server reads its files every
/// second); fails after [`TIMEOUT`].
async fn eventually<F, Fut>(what: &str, mut connect: F) -> Result<Client>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Client>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match connect().await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() > deadline => {
                bail!("{what}: not within {TIMEOUT:?}: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The TLS certificate is replaced (a Kubernetes-style symlink swap) while
/// a client is connected: new connections get the new certificate, the
/// first connection goes on; then an invalid file is refused and the
/// certificate in use kept. A plain-TCP user is served throughout.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn the_tls_certificate_is_reloaded_without_dropping_connections() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (ca_a, ca_b) = (pki::TestCa::new("a")?, pki::TestCa::new("b")?);
    let (a, b) = (ca_a.server_cert()?, ca_b.server_cert()?);
    let (ca_a, ca_b) = (ca_a.pem().into_bytes(), ca_b.pem().into_bytes());
    let (cert_a, key_a) = (a.cert_pem.as_bytes(), a.key_pem.as_bytes());
    let (cert_b, key_b) = (b.cert_pem.as_bytes(), b.key_pem.as_bytes());
    let secret = tmp.path().join("tls");
    std::fs::create_dir(&secret)?;
    let mut mount = Mounted::new(&secret);
    mount.publish(&[("tls.crt", cert_a), ("tls.key", key_a)])?;
    let srv = TestServer::builder()
        .broker_toml(&format!(
            "tls_listen = \"127.0.0.1:0\"\nsecrets_reload_secs = 1\ntls = {{ cert = {:?}, key = {:?} }}",
            mount.path("tls.crt").display().to_string(),
            mount.path("tls.key").display().to_string(),
        ))
        .start()
        .await?;
    let port = srv.ports().tls.context("no tls listener")?;
    let mut bob = srv.user_v4("bob", "bob-tcp").await?;

    let mut first = tls_client(port, &ca_a, "alice", "alice-tls-1").await?;
    first.subscribe_own().await?;
    first.rpc("rooms.list", json!({})).await?;
    assert!(
        tls_client(port, &ca_b, "alice", "alice-tls-x")
            .await
            .is_err(),
        "before the swap the server presents A"
    );

    mount.publish(&[("tls.crt", cert_b), ("tls.key", key_b)])?;
    let mut second = eventually("a TLS connection with certificate B", || {
        tls_client(port, &ca_b, "carol", "carol-tls-2")
    })
    .await?;
    second.subscribe_own().await?;
    second.rpc("rooms.list", json!({})).await?;
    assert!(
        tls_client(port, &ca_a, "alice", "alice-tls-y")
            .await
            .is_err(),
        "new connections get B"
    );
    assert_eq!(first.is_closed(), None, "the first connection was kept");
    first.rpc("rooms.list", json!({})).await?;

    // a certificate whose key does not match it: refused, B kept
    mount.publish(&[("tls.crt", cert_a), ("tls.key", key_b)])?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let (_, m) = srv.http_get("/metrics").await?;
        if metric(
            &m,
            r#"chatmq_secret_reloads_total{result="refused",what="tls"}"#,
        ) >= 1.0
        {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the mismatched key was not refused:\n{m}\n{}",
                srv.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut third = tls_client(port, &ca_b, "dave", "dave-tls-3").await?;
    third.subscribe_own().await?;
    third.rpc("rooms.list", json!({})).await?;
    bob.rpc("rooms.list", json!({})).await?;
    Ok(())
}

/// The JWT RS256 public key file is replaced: tokens signed by the new key
/// log in, the old key's are refused from then on, and a connection made
/// with an old-key token stays up.
#[tokio::test(flavor = "multi_thread")]
async fn the_jwt_key_is_reloaded() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut keys = Vec::new();
    for name in ["a", "b"] {
        let (private, public) = pki::rsa_key_pair()?;
        let key = tmp.path().join(format!("{name}.key"));
        let public_path = tmp.path().join(format!("{name}.pub"));
        std::fs::write(&key, private)?;
        std::fs::write(&public_path, public)?;
        keys.push((key, public_path));
    }
    let live = tmp.path().join("jwt.pub.pem");
    std::fs::copy(&keys[0].1, &live)?;
    let srv = TestServer::builder()
        .broker_toml("secrets_reload_secs = 1")
        .jwt_toml(&format!(
            "rs256_public_key = {:?}",
            live.display().to_string()
        ))
        .start()
        .await?;
    let port = srv.tcp_port();
    let mut alice = srv.user_v4("alice", "alice-rs").await?;
    let old = rs256(&keys[0].0, "kate", now() + 3600)?;
    let new = rs256(&keys[1].0, "kate", now() + 3600)?;
    let mut kate = client_v4(port, "kate", &old, "kate-old").await?;
    kate.subscribe_own().await?;
    assert!(
        client_v4(port, "kate", &new, "kate-new").await.is_err(),
        "the new key's token before the rotation"
    );

    // rotate: write the new key beside, then rename over (atomic)
    let tmp_file = tmp.path().join("jwt.pub.pem.tmp");
    std::fs::copy(&keys[1].1, &tmp_file)?;
    std::fs::rename(&tmp_file, &live)?;
    let mut kate2 = eventually("a login with the new key's token", || {
        client_v4(port, "kate", &new, "kate-new")
    })
    .await?;
    kate2.subscribe_own().await?;
    kate2.rpc("rooms.list", json!({})).await?;
    assert!(
        client_v4(port, "kate", &old, "kate-old-2").await.is_err(),
        "the old key's tokens are refused from now on"
    );
    assert_eq!(kate.is_closed(), None, "the connection made before stays");
    kate.rpc("rooms.list", json!({})).await?;
    alice.rpc("rooms.list", json!({})).await?;
    Ok(())
}
