//! TLS for the HTTP endpoint (`StreamsConfig::http_tls`): the server side of the endpoint and
//! the client side of queries forwarded to other instances, both with rustls (ring for the
//! cryptography). Certificates and keys are read from PEM files when the instance starts, so
//! that a missing or unreadable file is a configuration error of `start`, before anything runs.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::HttpTls;
use crate::{Error, Result};

/// The endpoint's TLS: its server configuration and the client configuration with which it
/// asks other instances.
#[derive(Clone)]
pub(super) struct Tls {
    pub(super) acceptor: TlsAcceptor,
    pub(super) connector: TlsConnector,
}

impl Tls {
    /// Reads the certificate chain, the private key and the trusted certificates of `config`.
    pub(super) fn load(config: &HttpTls) -> Result<Self> {
        let chain = certificates(&config.certificate_chain)?;
        let key = PrivateKeyDer::from_pem_file(&config.private_key).map_err(|e| {
            Error::Config(format!(
                "http_tls: no private key read from {}: {e}",
                config.private_key.display()
            ))
        })?;
        // ring: it builds with a C compiler alone (aws-lc-rs, with post-quantum key exchange,
        // needs more of the machine); rustls 0.23.48 marks it deprecated for that reason only.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("http_tls: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)
            .map_err(|e| {
                Error::Config(format!(
                    "http_tls: the certificate chain {} and the private key {} do not make a \
                     server identity: {e}",
                    config.certificate_chain.display(),
                    config.private_key.display()
                ))
            })?;
        // Other instances are trusted when their certificate chains to one of these: the given
        // trust file, or else this instance's own chain (one certificate shared by every
        // instance, or a chain that ends in the authority that signed them all).
        let trusted = match &config.trust {
            Some(path) => certificates(path)?,
            None => chain,
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in trusted {
            roots
                .add(c)
                .map_err(|e| Error::Config(format!("http_tls: a trusted certificate: {e}")))?;
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("http_tls: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

/// Every certificate of the PEM file at `path` (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let read = |e: &dyn std::fmt::Display| {
        Error::Config(format!(
            "http_tls: cannot read certificates from {}: {e}",
            path.display()
        ))
    };
    let all = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| read(&e))?;
    if all.is_empty() {
        return Err(read(&"no certificate in the file"));
    }
    Ok(all)
}

/// The name a forwarded query checks the other instance's certificate against: the host of
/// its advertised `host:port` (a DNS name or an IP address).
pub(super) fn server_name(address: &str) -> std::result::Result<ServerName<'static>, String> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host} is no server name: {e}"))
}
