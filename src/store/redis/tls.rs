//! The TLS material of Redis connections, for every URL form (one server, Cluster,
//! Sentinel): the CA certificates a server's certificate must chain to (`--redis-ca-file`,
//! else the system's), and the client certificate and key shown to a server that asks for
//! one (`--redis-client-cert-file` with `--redis-client-key-file`, `tls-auth-clients yes`).
//! The files are read once, at start-up: a missing or malformed one stops the service with
//! the flag's and the file's names.

use std::path::{Path, PathBuf};

use deadpool_redis::redis::{ClientTlsConfig, TlsCertificates};

use crate::store::StoreError;

const CA_FLAG: &str = "--redis-ca-file";
const CERT_FLAG: &str = "--redis-client-cert-file";
const KEY_FLAG: &str = "--redis-client-key-file";

/// The files of the TLS flags, as given (none: the system's CAs and no client certificate).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) trusted instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The client certificate chain (PEM).
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// The certificates for redis-rs, read from the files; `None` when no file is given.
    /// The client certificate and key go together: one without the other is refused.
    pub fn load(&self) -> Result<Option<TlsCertificates>, StoreError> {
        let client_tls = match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read_pem(CERT_FLAG, cert, is_certificate, "certificate")?,
                client_key: read_pem(KEY_FLAG, key, is_private_key, "private key")?,
            }),
            (Some(_), None) => return Err(missing(CERT_FLAG, KEY_FLAG)),
            (None, Some(_)) => return Err(missing(KEY_FLAG, CERT_FLAG)),
        };
        let root_cert = match &self.ca_file {
            Some(path) => Some(read_pem(CA_FLAG, path, is_certificate, "certificate")?),
            None => None,
        };
        if client_tls.is_none() && root_cert.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }

    /// The flag of the first file given, for "needs a TLS URL" messages.
    pub fn first_flag(&self) -> Option<&'static str> {
        [
            (CA_FLAG, &self.ca_file),
            (CERT_FLAG, &self.client_cert_file),
            (KEY_FLAG, &self.client_key_file),
        ]
        .into_iter()
        .find_map(|(flag, file)| file.is_some().then_some(flag))
    }
}

fn missing(given: &str, wanted: &str) -> StoreError {
    StoreError::Config(format!("{given} needs {wanted} (give both or neither)"))
}

/// The file at `path`, checked to hold a PEM block `is_wanted` accepts (`what` names it).
fn read_pem(
    flag: &str,
    path: &Path,
    is_wanted: fn(&str) -> bool,
    what: &str,
) -> Result<Vec<u8>, StoreError> {
    let bad = |why: String| StoreError::Config(format!("{flag} {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8_lossy(&pem);
    let has_block = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .filter_map(|l| l.strip_suffix("-----"))
        .any(is_wanted);
    if !has_block {
        return Err(bad(format!("holds no PEM {what}")));
    }
    Ok(pem)
}

fn is_certificate(label: &str) -> bool {
    label == "CERTIFICATE"
}

/// PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`); an
/// encrypted key is not one rustls can use.
fn is_private_key(label: &str) -> bool {
    matches!(label, "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ratelimiter-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn error(files: &TlsFiles) -> String {
        files.load().unwrap_err().to_string()
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_each_file_is_checked() {
        let cert = file(
            "c.pem",
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        );
        let key = file(
            "k.pem",
            "-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n",
        );
        assert!(TlsFiles::default().load().unwrap().is_none());
        let only_cert = TlsFiles {
            client_cert_file: Some(cert.clone()),
            ..TlsFiles::default()
        };
        assert!(
            error(&only_cert).contains("--redis-client-cert-file needs --redis-client-key-file")
        );
        let only_key = TlsFiles {
            client_key_file: Some(key.clone()),
            ..TlsFiles::default()
        };
        assert!(
            error(&only_key).contains("--redis-client-key-file needs --redis-client-cert-file")
        );
        let swapped = TlsFiles {
            client_cert_file: Some(key.clone()),
            client_key_file: Some(cert.clone()),
            ca_file: None,
        };
        let e = error(&swapped);
        assert!(
            e.contains("--redis-client-cert-file") && e.contains("k.pem"),
            "{e}"
        );
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let absent = TlsFiles {
            client_cert_file: Some(cert.clone()),
            client_key_file: Some(cert.with_file_name("absent.pem")),
            ca_file: None,
        };
        let e = error(&absent);
        assert!(
            e.contains("--redis-client-key-file") && e.contains("absent.pem"),
            "{e}"
        );
        let both = TlsFiles {
            client_cert_file: Some(cert),
            client_key_file: Some(key),
            ca_file: None,
        };
        let certs = both.load().unwrap().unwrap();
        assert!(certs.client_tls.is_some() && certs.root_cert.is_none());
    }
}
