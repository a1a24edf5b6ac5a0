//! Secrets that change while the server runs: the TLS certificate and key
//! and the JWT RS256 public key are read again every
//! `broker.secrets_reload_secs`. Kubernetes rotates a mounted Secret by
//! swapping a symlink, which no file-change notification on the file itself
//! reports reliably, so the files' contents are compared instead (a few
//! small reads every few seconds).
//!
//! A changed set of files that is valid replaces the TLS acceptor or the
//! key behind an `ArcSwap`: new handshakes and logins use it, connections
//! already up keep the configuration they were made with. An invalid one
//! (a half-written file, a key that does not belong to the certificate) is
//! logged once and the previous one kept; it is tried again when the files
//! change again.

use crate::shared::Shared;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// A set of files read together, and what they held last time.
pub(crate) struct Watched {
    what: &'static str,
    paths: Vec<PathBuf>,
    seen: Vec<Vec<u8>>,
    /// The last read error, logged once until it changes.
    error: Option<String>,
}

impl Watched {
    /// `seen`: the contents in use now.
    pub(crate) fn new(what: &'static str, paths: Vec<PathBuf>, seen: Vec<Vec<u8>>) -> Self {
        Watched {
            what,
            paths,
            seen,
            error: None,
        }
    }

    /// The files' contents if they differ from last time (then they count
    /// as seen, whether or not the caller can use them).
    async fn changed(&mut self) -> Option<Vec<Vec<u8>>> {
        let mut now = Vec::with_capacity(self.paths.len());
        for p in &self.paths {
            match tokio::fs::read(p).await {
                Ok(bytes) => now.push(bytes),
                Err(e) => {
                    // e.g. the moment a symlink is swapped: try again next time
                    let e = format!("{}: {e}", p.display());
                    if self.error.as_ref() != Some(&e) {
                        warn!(what = self.what, error = %e, "cannot read; the one in use is kept");
                        self.error = Some(e);
                    }
                    return None;
                }
            }
        }
        self.error = None;
        if now == self.seen {
            return None;
        }
        self.seen = now.clone();
        Some(now)
    }
}

/// Polls the TLS files (when `tls` is set) and the RS256 key (when the
/// authenticator has one) every `every`, until the task is aborted.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut tls: Option<(Watched, Arc<ArcSwap<tokio_rustls::TlsAcceptor>>)>,
    every: Duration,
) {
    let mut jwt = shared.auth.rs256_key().map(|(path, pem)| {
        Watched::new(
            "jwt rs256 public key",
            vec![path.to_path_buf()],
            vec![pem.to_vec()],
        )
    });
    if tls.is_none() && jwt.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Some((files, acceptor)) = &mut tls {
            if let Some(new) = files.changed().await {
                let (cert, key) = (&new[0], &new[1]);
                match crate::transport::tls_acceptor_from_pem(cert, key) {
                    Ok(a) => {
                        acceptor.store(Arc::new(a));
                        shared
                            .metrics
                            .secret_reloads
                            .with_label_values(&["tls", "ok"])
                            .inc();
                        info!("tls certificate and key reloaded");
                    }
                    Err(e) => {
                        shared
                            .metrics
                            .secret_reloads
                            .with_label_values(&["tls", "refused"])
                            .inc();
                        warn!(error = %e, "new tls certificate or key refused; the previous one is kept");
                    }
                }
            }
        }
        if let Some(files) = &mut jwt {
            if let Some(new) = files.changed().await {
                match shared.auth.set_rs256_key(&new[0]) {
                    Ok(()) => {
                        shared
                            .metrics
                            .secret_reloads
                            .with_label_values(&["jwt", "ok"])
                            .inc();
                        info!("jwt rs256 public key reloaded");
                    }
                    Err(e) => {
                        shared
                            .metrics
                            .secret_reloads
                            .with_label_values(&["jwt", "refused"])
                            .inc();
                        warn!(error = %e, "new jwt rs256 public key refused; the previous one is kept");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watched_files_report_each_change_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "a1").expect("write");
        std::fs::write(&b, "b1").expect("write");
        let mut w = Watched::new(
            "test",
            vec![a.clone(), b.clone()],
            vec![b"a1".to_vec(), b"b1".to_vec()],
        );
        assert_eq!(w.changed().await, None, "what is in use is no change");
        std::fs::write(&b, "b2").expect("write");
        assert_eq!(
            w.changed().await,
            Some(vec![b"a1".to_vec(), b"b2".to_vec()])
        );
        assert_eq!(w.changed().await, None, "reported once");
        // a symlink swapped to another file, as Kubernetes does
        let c = dir.path().join("c");
        std::fs::write(&c, "a3").expect("write");
        std::fs::remove_file(&a).expect("rm");
        assert_eq!(w.changed().await, None, "a missing file is no change");
        assert!(w.error.is_some());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&c, &a).expect("symlink");
            assert_eq!(
                w.changed().await,
                Some(vec![b"a3".to_vec(), b"b2".to_vec()])
            );
            assert!(w.error.is_none());
        }
    }
}
