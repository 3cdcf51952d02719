//! TLS, opt-in, on every service of a cluster (rustls with ring, under tonic).
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
//! Both files are checked when loaded, so a wrong path, a key where a certificate belongs or a
//! key that does not match the certificate is an error naming the file at startup, not a
//! failed handshake later.
//!
//! The TLS transport is Manta's own rather than tonic's (which wraps the same rustls): rustls
//! reads the socket at most a few KiB at a time, so a 1 GiB pull through tonic's TLS made a
//! quarter of a million `read` calls; here the socket under the TLS session is read through a
//! large buffer ([`connect`] for clients, [`accept`] for servers), rustls may queue more
//! outgoing records before it writes, and a server completes each handshake off its accept
//! loop, under a deadline, so a client that never finishes one holds up no other.
//!
//! ```
//! let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
//! let identity = manta_flight::tls::ServerIdentity::from_pem(
//!     ca.cert.pem().as_bytes(),
//!     ca.signing_key.serialize_pem().as_bytes(),
//! )
//! .unwrap();
//! manta_flight::tls::trust_pem(ca.cert.pem().as_bytes()).unwrap();
//! let endpoint = manta_flight::tls::endpoint("https://localhost:1").unwrap();
//! assert!(endpoint.is_tls());
//! ```

mod accept;
mod connect;

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use crate::error::{Error, Result};

pub use accept::{Connection, incoming};
pub use connect::ClientEndpoint;

/// The environment variable naming a PEM file of certificate authorities to trust.
pub const CA_ENV: &str = "MANTA_TLS_CA";

/// Bytes read from a TLS connection's socket at a time, at most (rustls asks for 4 KiB).
const SOCKET_READ_BUFFER: usize = 256 << 10;

/// Bytes of encrypted records a TLS session queues before it must write them to the socket
/// (rustls's default, 64 KiB, splits a 1 MiB message into sixteen writes).
const TLS_WRITE_QUEUE: usize = 1 << 20;

/// The protocol both sides offer in the handshake: gRPC and Flight are HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// A server's certificate chain and private key, checked and made into a TLS configuration.
#[derive(Clone)]
pub struct ServerIdentity {
    config: Arc<rustls::ServerConfig>,
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
        let chain = certificates(cert, cert_what)?;
        let private_key = PrivateKeyDer::from_pem_slice(key).map_err(|e| Error::Tls {
            what: key_what.into(),
            reason: format!("no PEM private key ({e})"),
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_no_client_auth()
                    .with_single_cert(chain, private_key)
            })
            .map_err(|e| Error::Tls {
                what: format!("{cert_what} and {key_what}"),
                reason: e.to_string(),
            })?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// From the PEM files at `cert` and `key`.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        Self::checked(
            &read(cert)?,
            &read(key)?,
            &format!("the certificate {}", cert.display()),
            &format!("the private key {}", key.display()),
        )
    }
}

/// The cryptography every TLS session of this process uses: rustls's ring provider (chosen
/// explicitly, so a second provider compiled in by another crate cannot make it ambiguous).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Tls {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Certificate authorities this process trusts; `None` until the environment was read.
static TRUSTED: RwLock<Option<Vec<CertificateDer<'static>>>> = RwLock::new(None);

/// Trusts the certificate authorities in `pem` (one or more certificates) for every `https://`
/// connection this process makes from now on.
pub fn trust_pem(pem: &[u8]) -> Result<()> {
    trust(pem, "the certificate authority")
}

fn trust(pem: &[u8], what: &str) -> Result<()> {
    let authorities = certificates(pem, what)?;
    tracing::debug!(
        certificates = authorities.len(),
        "trusting a certificate authority"
    );
    let mut trusted = TRUSTED.write().unwrap_or_else(|e| e.into_inner());
    trusted
        .get_or_insert_with(from_environment)
        .extend(authorities);
    Ok(())
}

/// Trusts the certificate authorities in the PEM file at `path` (see [`trust_pem`]).
pub fn trust_file(path: &Path) -> Result<()> {
    trust(
        &read(path)?,
        &format!("the certificate authority {}", path.display()),
    )
}

/// The authorities named by `MANTA_TLS_CA`, if it is set and readable; a bad file is logged
/// (and connections to `https://` addresses then fail naming the missing trust).
fn from_environment() -> Vec<CertificateDer<'static>> {
    let Some(path) = std::env::var_os(CA_ENV).filter(|p| !p.is_empty()) else {
        return Vec::new();
    };
    let path = Path::new(&path);
    match read(path).and_then(|pem| certificates(&pem, "the certificate authority")) {
        Ok(authorities) => authorities,
        Err(reason) => {
            tracing::warn!("{CA_ENV}={}: {reason}", path.display());
            Vec::new()
        }
    }
}

fn trusted() -> Vec<CertificateDer<'static>> {
    if let Some(trusted) = TRUSTED.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return trusted.clone();
    }
    TRUSTED
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(from_environment)
        .clone()
}

/// Where a client connects to `url`, with Manta's transport settings
/// ([`crate::tune_endpoint`]); TLS, verified against the trusted authorities, when the scheme
/// is `https`.
pub fn endpoint(url: &str) -> Result<ClientEndpoint> {
    let invalid = |reason: String| Error::Tls {
        what: url.to_string(),
        reason,
    };
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|e| invalid(format!("not a valid address ({e})")))?;
    if uri.scheme_str() != Some("https") {
        return Ok(ClientEndpoint::plain(uri));
    }
    let authorities = trusted();
    if authorities.is_empty() {
        return Err(invalid(format!(
            "an https address, but no certificate authority is trusted: pass --tls-ca or set \
             {CA_ENV}"
        )));
    }
    let mut roots = rustls::RootCertStore::empty();
    for authority in authorities {
        roots
            .add(authority)
            .map_err(|e| invalid(format!("a trusted certificate authority is unusable ({e})")))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    ClientEndpoint::tls(uri, Arc::new(config)).map_err(invalid)
}

/// The certificates in `pem`; an error if there are none or one does not parse.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls {
            what: what.into(),
            reason: format!("not a PEM certificate ({e})"),
        })?;
    if certificates.is_empty() {
        return Err(Error::Tls {
            what: what.into(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certificates)
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
        assert!(!endpoint("http://127.0.0.1:1").unwrap().is_tls());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_at_load() {
        let one = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let error = ServerIdentity::from_pem(
            one.cert.pem().as_bytes(),
            other.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("private key"), "{error}");
    }
}
