//! TLS and mTLS on the public listeners (HTTP and gRPC), with rustls and its ring provider.
//!
//! [`ServerTls`] holds the certificate in force for both listeners: one rustls
//! `ServerConfig` per listener (ALPN `h2` for gRPC; `h2` and `http/1.1` for HTTP), built from
//! the same PEM files, behind an `ArcSwap` so that a reload is one pointer swap and every new
//! connection's handshake reads the pair in force without a lock. With a client CA, a client
//! certificate chaining to it is required: a client without one, or with another CA's, fails
//! its handshake and never reaches a request.
//!
//! Reload: [`watch`] polls the files' contents with the config watch's
//! [`fingerprint`](crate::reload::fingerprint) and loads them when they change. A pair that
//! does not load (unreadable, not PEM, a key that is not the certificate's) is refused,
//! logged and counted in `ratelimiter_tls_events_total{event="reload_failure"}`; the old one
//! stays. Connections already open keep the certificate they were made with.
//!
//! The handshake itself is done on the accept path, [`accept::Secured`].

pub mod accept;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};

use crate::metrics::{Metrics, TlsEvent};
use crate::reload::{Fingerprint, fingerprint};

pub use accept::{Connection, Secured};

/// The PEM files TLS is served from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`--tls-cert-file`).
    pub cert: PathBuf,
    /// The certificate's private key: PKCS#8, PKCS#1 or SEC1 (`--tls-key-file`).
    pub key: PathBuf,
    /// CAs a client certificate must chain to; given, one is required (`--tls-client-ca-file`).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// A fingerprint of every file's contents, as the config watch takes it.
    pub fn fingerprint(&self) -> [Fingerprint; 3] {
        [
            fingerprint(&self.cert),
            fingerprint(&self.key),
            self.client_ca.as_deref().map_or([0; 32], fingerprint),
        ]
    }
}

/// Why certificate files do not make a TLS configuration. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not a PEM private key ({reason})", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{}: not a usable client CA ({reason})", path.display())]
    ClientCa { path: PathBuf, reason: String },
    #[error("{} and {} do not make a certificate pair: {reason}", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Which listener a configuration is for: it decides the ALPN protocols offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// HTTP: HTTP/2 or HTTP/1.1.
    Http,
}

/// The configurations in force, one per listener, from one set of files.
struct InForce {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// The TLS side of both public listeners: the certificate in force, reloadable.
pub struct ServerTls {
    files: TlsFiles,
    in_force: ArcSwap<InForce>,
    metrics: Arc<Metrics>,
}

impl ServerTls {
    /// Loads `files`; an error names the file at fault.
    pub fn load(files: TlsFiles, metrics: Arc<Metrics>) -> Result<Self, TlsError> {
        let in_force = build(&files)?;
        Ok(ServerTls {
            files,
            in_force: ArcSwap::from_pointee(in_force),
            metrics,
        })
    }

    /// The configuration new connections on a listener of this kind get now.
    pub fn config(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let in_force = self.in_force.load();
        match alpn {
            Alpn::Grpc => in_force.grpc.clone(),
            Alpn::Http => in_force.http.clone(),
        }
    }

    /// Whether a client certificate is required.
    pub fn requires_client_certificate(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Counts one event (a failed handshake, a reload).
    pub fn count(&self, event: TlsEvent) {
        self.metrics.tls_event(event);
    }

    fn fingerprint(&self) -> [Fingerprint; 3] {
        self.files.fingerprint()
    }

    /// One tick of the watch: when the files no longer match `seen`, loads them and swaps
    /// them in (refused, logged and counted when they do not load). Returns the fingerprint
    /// now acted on: `seen` again when the files changed during the load.
    pub fn reload_if_changed(&self, seen: [Fingerprint; 3]) -> [Fingerprint; 3] {
        let before = self.fingerprint();
        if before == seen {
            return seen;
        }
        let built = build(&self.files);
        if self.fingerprint() != before {
            return seen;
        }
        self.swap_in(built);
        before
    }

    /// Loads the files whatever they hold and swaps them in (on `SIGHUP`).
    pub fn reload(&self) {
        self.swap_in(build(&self.files));
    }

    /// Puts a freshly loaded pair in force, or refuses it (logged and counted), keeping the old.
    fn swap_in(&self, built: Result<InForce, TlsError>) {
        match built {
            Ok(in_force) => {
                self.in_force.store(Arc::new(in_force));
                self.count(TlsEvent::ReloadSuccess);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                self.count(TlsEvent::ReloadFailure);
                tracing::error!(error = %e, "TLS certificate reload refused; keeping the old certificate");
            }
        }
    }
}

/// Reloads `tls`'s files on every `SIGHUP`, as the configuration is reloaded, whether or not
/// the watch is on.
#[cfg(unix)]
pub fn reload_on_sighup(tls: Arc<ServerTls>) {
    crate::reload::on_sighup("TLS certificates", move || tls.reload());
}

/// Polls `tls`'s files every `every` and reloads them when they change. `seen` is the
/// fingerprint taken before the first load, so that no change after it goes unseen.
pub async fn watch(tls: Arc<ServerTls>, every: Duration, seen: [Fingerprint; 3]) {
    crate::reload::poll_for_changes("TLS certificates", every, seen, move |seen| {
        tls.reload_if_changed(seen)
    })
    .await
}

/// Both listeners' configurations from `files`.
fn build(files: &TlsFiles) -> Result<InForce, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let verifier = match &files.client_ca {
        Some(ca) => Some(client_verifier(ca, &provider)?),
        None => None,
    };
    let one = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| pair_error(files, e))?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| pair_error(files, e))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    };
    Ok(InForce {
        grpc: one(&[b"h2"])?,
        http: one(&[b"h2", b"http/1.1"])?,
    })
}

fn pair_error(files: &TlsFiles, e: rustls::Error) -> TlsError {
    TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every PEM certificate in `path`; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: path.to_owned(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A verifier that requires a client certificate chaining to a CA in `path`.
fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let ca_error = |reason: String| TlsError::ClientCa {
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ca_error(e.to_string()))
}
