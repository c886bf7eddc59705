//! TLS for the MQTT connection and HTTPS downloads: rustls on ring, chain and host name always
//! verified, against the CA the firmware gives or the bundled web roots.
//!
//! Without the `tls` cargo feature (default on) the library has no TLS at all: `https://` URLs
//! fail with [`FetchError::Tls`](crate::fetch::FetchError::Tls), a CA is refused with
//! [`CaPemError::NoTls`], and MQTT over TLS cannot be configured.

/// Why a CA PEM was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CaPemError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("a PEM certificate block is malformed")]
    Malformed,
    #[error("a certificate cannot serve as a trust anchor")]
    NotAnAnchor,
    #[error("this build has no TLS support (cargo feature `tls`)")]
    NoTls,
}

/// Parses every `CERTIFICATE` block of `pem` and checks that each can be a trust anchor.
/// Other PEM blocks (keys, parameters) are ignored; at least one certificate is required.
pub fn check_ca_pem(pem: &[u8]) -> Result<(), CaPemError> {
    imp::parse_ca_pem(pem).map(drop)
}

pub(crate) use imp::*;

#[cfg(feature = "tls")]
mod imp {
    use std::sync::Arc;

    use rustls::crypto::{CryptoProvider, KeyProvider};
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use rustls::sign::SigningKey;

    use super::CaPemError;

    /// Trust anchors parsed from a PEM.
    #[derive(Clone)]
    pub struct CaRoots(pub Vec<CertificateDer<'static>>);

    pub fn parse_ca_pem(pem: &[u8]) -> Result<CaRoots, CaPemError> {
        let mut store = rustls::RootCertStore::empty();
        let mut certs = Vec::new();
        for der in CertificateDer::pem_slice_iter(pem) {
            let der = der.map_err(|_| CaPemError::Malformed)?;
            certs.push(der.clone());
            store.add(der).map_err(|_| CaPemError::NotAnAnchor)?;
        }
        if certs.is_empty() {
            return Err(CaPemError::NoCertificate);
        }
        Ok(CaRoots(certs))
    }

    /// The device never authenticates with a key of its own, so no key type is loadable (and
    /// no signing code is linked).
    #[derive(Debug)]
    struct NoClientKeys;

    impl KeyProvider for NoClientKeys {
        fn load_private_key(
            &self,
            _key: PrivateKeyDer<'static>,
        ) -> Result<Arc<dyn SigningKey>, rustls::Error> {
            Err(rustls::Error::General(
                "client keys are not supported".into(),
            ))
        }
    }

    /// ring's cipher suites, key exchanges and signature checks. Given explicitly: rustls
    /// panics when it has to pick a provider itself and finds two in the build.
    pub fn provider() -> Arc<CryptoProvider> {
        static NO_KEYS: NoClientKeys = NoClientKeys;
        Arc::new(CryptoProvider {
            key_provider: &NO_KEYS,
            ..rustls::crypto::ring::default_provider()
        })
    }

    /// Whether `io` carries a rustls error (ureq reports handshake failures that way).
    pub fn is_tls_io_error(io: &std::io::Error) -> bool {
        io.get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
    }

    /// ureq's TLS settings: `roots`, or the bundled web roots.
    pub fn http_config(roots: Option<&CaRoots>) -> ureq::tls::TlsConfig {
        ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(provider())
            .root_certs(match roots {
                Some(certs) => ureq::tls::RootCerts::Specific(Arc::new(
                    certs
                        .0
                        .iter()
                        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                        .collect(),
                )),
                None => ureq::tls::RootCerts::WebPki,
            })
            .build()
    }

    /// The MQTT connection's TLS settings, trusting exactly the certificates in `ca_pem`.
    pub fn mqtt_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, CaPemError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in parse_ca_pem(ca_pem)?.0 {
            roots.add(cert).map_err(|_| CaPemError::NotAnAnchor)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|_| CaPemError::NoTls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

#[cfg(not(feature = "tls"))]
mod imp {
    use super::CaPemError;

    #[derive(Clone)]
    pub struct CaRoots;

    pub fn parse_ca_pem(_pem: &[u8]) -> Result<CaRoots, CaPemError> {
        Err(CaPemError::NoTls)
    }

    pub fn is_tls_io_error(_io: &std::io::Error) -> bool {
        false
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    #[test]
    fn ca_pem_checks() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let key = ca.signing_key.serialize_pem();
        let pem = ca.cert.pem();
        assert_eq!(check_ca_pem(pem.as_bytes()), Ok(()));
        assert_eq!(check_ca_pem(format!("{key}{pem}").as_bytes()), Ok(()));
        assert_eq!(check_ca_pem(b""), Err(CaPemError::NoCertificate));
        assert_eq!(check_ca_pem(key.as_bytes()), Err(CaPemError::NoCertificate));
        let not_der = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(check_ca_pem(not_der), Err(CaPemError::NotAnAnchor));
        let not_base64 = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert_eq!(check_ca_pem(not_base64), Err(CaPemError::Malformed));
    }
}
