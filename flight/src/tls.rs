//! TLS, opt-in, on every service of a cluster (rustls, through tonic).
//!
//! A server given a [`ServerIdentity`] (a certificate chain and its private key, PEM) serves
//! only TLS; its address is then an `https://` URL. A client connects to an `https://`
//! address with TLS, verifying the server's certificate against the certificate authorities
//! this process trusts: those given to [`trust_file`] or [`trust_pem`], and the PEM file named
//! by `MANTA_TLS_CA` (read on first use, which is how worker processes and drivers started by
//! a job learn it). An `http://` address stays plain. There are no public roots: a Manta
//! cluster's certificates come from the operator's own authority.
//!
//! TLS protects what crosses the network (the token, task arguments, blocks); the cluster
//! token remains what authenticates a caller (see [`crate::auth`]).
//!
//! Both files are checked when loaded, so a wrong path or a key where a certificate belongs
//! is an error naming the file at startup, not a failed handshake later.
//!
//! ```
//! let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
//! let identity = manta_flight::tls::ServerIdentity::from_pem(
//!     ca.cert.pem().as_bytes(),
//!     ca.signing_key.serialize_pem().as_bytes(),
//! )
//! .unwrap();
//! manta_flight::tls::trust_pem(ca.cert.pem().as_bytes()).unwrap();
//! let _config = identity.server_config();
//! let endpoint = manta_flight::tls::endpoint("https://localhost:1").unwrap();
//! assert_eq!(endpoint.uri().scheme_str(), Some("https"));
//! ```

use std::path::Path;
use std::sync::RwLock;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::client::tune_endpoint;
use crate::error::{Error, Result};

/// The environment variable naming a PEM file of certificate authorities to trust.
pub const CA_ENV: &str = "MANTA_TLS_CA";

/// A server's certificate chain and private key, both PEM, checked to parse.
#[derive(Clone)]
pub struct ServerIdentity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerIdentity(..)")
    }
}

impl ServerIdentity {
    /// From PEM bytes: `cert` holds one or more certificates (the server's first), `key` its
    /// private key.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self> {
        Self::checked(cert, key, "the certificate", "the private key")
    }

    /// From PEM bytes, naming them `cert_what` and `key_what` in errors.
    fn checked(cert: &[u8], key: &[u8], cert_what: &str, key_what: &str) -> Result<Self> {
        certificates(cert, cert_what)?;
        PrivateKeyDer::from_pem_slice(key).map_err(|e| Error::Tls {
            what: key_what.into(),
            reason: format!("no PEM private key ({e})"),
        })?;
        Ok(Self {
            cert: cert.to_vec(),
            key: key.to_vec(),
        })
    }

    /// From the PEM files at `cert` and `key`.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| Error::Tls {
                what: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        Self::checked(
            &read(cert)?,
            &read(key)?,
            &format!("the certificate {}", cert.display()),
            &format!("the private key {}", key.display()),
        )
    }

    /// The tonic server configuration presenting this identity.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key))
    }
}

/// Certificate authorities this process trusts; `None` until the environment was read.
static TRUSTED: RwLock<Option<Vec<Certificate>>> = RwLock::new(None);

/// Trusts the certificate authorities in `pem` (one or more certificates) for every `https://`
/// connection this process makes from now on.
pub fn trust_pem(pem: &[u8]) -> Result<()> {
    trust(pem, "the certificate authority")
}

fn trust(pem: &[u8], what: &str) -> Result<()> {
    let count = certificates(pem, what)?;
    let mut trusted = TRUSTED.write().unwrap_or_else(|e| e.into_inner());
    let trusted = trusted.get_or_insert_with(from_environment);
    trusted.push(Certificate::from_pem(pem));
    tracing::debug!(certificates = count, "trusting a certificate authority");
    Ok(())
}

/// Trusts the certificate authorities in the PEM file at `path` (see [`trust_pem`]).
pub fn trust_file(path: &Path) -> Result<()> {
    let pem = std::fs::read(path).map_err(|e| Error::Tls {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    trust(
        &pem,
        &format!("the certificate authority {}", path.display()),
    )
}

/// The authorities named by `MANTA_TLS_CA`, if it is set and readable; a bad file is logged
/// (and connections to `https://` addresses then fail naming the missing trust).
fn from_environment() -> Vec<Certificate> {
    let Some(path) = std::env::var_os(CA_ENV).filter(|p| !p.is_empty()) else {
        return Vec::new();
    };
    let path = Path::new(&path);
    match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|pem| {
            certificates(&pem, "the certificate authority")
                .map(|_| pem)
                .map_err(|e| e.to_string())
        }) {
        Ok(pem) => vec![Certificate::from_pem(pem)],
        Err(reason) => {
            tracing::warn!("{CA_ENV}={}: {reason}", path.display());
            Vec::new()
        }
    }
}

fn trusted() -> Vec<Certificate> {
    if let Some(trusted) = TRUSTED.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return trusted.clone();
    }
    TRUSTED
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(from_environment)
        .clone()
}

/// An endpoint for `url` with Manta's transport settings ([`tune_endpoint`]); TLS, verified
/// against the trusted authorities, when the scheme is `https`.
pub fn endpoint(url: &str) -> Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| Error::Tls {
        what: url.to_string(),
        reason: format!("not a valid address ({e})"),
    })?;
    let endpoint = tune_endpoint(endpoint);
    if endpoint.uri().scheme_str() != Some("https") {
        return Ok(endpoint);
    }
    let roots = trusted();
    if roots.is_empty() {
        return Err(Error::Tls {
            what: url.to_string(),
            reason: format!(
                "an https address, but no certificate authority is trusted: pass --tls-ca \
                 or set {CA_ENV}"
            ),
        });
    }
    endpoint
        .tls_config(ClientTlsConfig::new().ca_certificates(roots))
        .map_err(|e| Error::Tls {
            what: url.to_string(),
            reason: e.to_string(),
        })
}

/// Counts the certificates in `pem`; an error if there are none or one does not parse.
fn certificates(pem: &[u8], what: &str) -> Result<usize> {
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        certificate.map_err(|e| Error::Tls {
            what: what.into(),
            reason: format!("not a PEM certificate ({e})"),
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(Error::Tls {
            what: what.into(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_not_a_certificate_and_garbage_is_neither() {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (made.cert.pem(), made.signing_key.serialize_pem());
        assert!(ServerIdentity::from_pem(cert.as_bytes(), key.as_bytes()).is_ok());
        let swapped = ServerIdentity::from_pem(key.as_bytes(), cert.as_bytes()).unwrap_err();
        assert!(swapped.to_string().contains("certificate"), "{swapped}");
        let garbage = ServerIdentity::from_pem(b"\x00\xffhello", key.as_bytes()).unwrap_err();
        assert!(
            garbage.to_string().contains("no PEM certificate"),
            "{garbage}"
        );
        assert!(trust_pem(key.as_bytes()).is_err());
    }

    #[test]
    fn plain_addresses_stay_plain() {
        let endpoint = endpoint("http://127.0.0.1:1").unwrap();
        assert_eq!(endpoint.uri().scheme_str(), Some("http"));
    }
}
