//! TLS for the MQTT connection and HTTPS downloads: rustls on ring, chain and host name always
//! verified, against the CA the firmware gives or the bundled web roots.
//!
//! Without the `tls` cargo feature (default on) the library has no TLS at all: `https://` URLs
//! fail with [`DownloadError::Tls`](crate::source::DownloadError::Tls), a CA is refused with
//! [`CaPemError::NoTls`], and MQTT over TLS cannot be configured.

/// Why a CA PEM was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CaPemError {
    /// The PEM holds no `CERTIFICATE` block (it may hold keys or nothing at all).
    #[error("no PEM certificate found")]
    NoCertificate,
    /// A `CERTIFICATE` block is not valid PEM (bad base64, missing end line).
    #[error("a PEM certificate block is malformed")]
    Malformed,
    /// A certificate's DER does not parse as an X.509 certificate webpki can trust.
    #[error("a certificate cannot serve as a trust anchor")]
    NotAnAnchor,
    /// The library was built without the `tls` feature, so no CA can be used.
    #[error("this build has no TLS support (cargo feature `tls`)")]
    NoTls,
}

/// A PEM-shaped text that stands for the bundled web roots (Mozilla's, from `webpki-roots`)
/// wherever a CA PEM is taken: the MQTT CA (`MqttOptions::ca_pem`, the `pub_key` of
/// `iotx_mqtt_param_t`, `conninfo::set_mqtt_ca`) and the HTTPS CA. It is what
/// `IOT_SetupConnInfo` puts in `pub_key` when MQTT runs over TLS and no CA was set, as iotkit
/// puts its bundled root there.
pub const WEB_ROOTS_PEM: &str =
    "-----BEGIN OTA BUNDLED WEB ROOTS-----\n-----END OTA BUNDLED WEB ROOTS-----\n";

/// Whether `pem` is [`WEB_ROOTS_PEM`] (surrounding white space and a trailing NUL aside).
pub fn is_web_roots(pem: &[u8]) -> bool {
    let text = pem.strip_suffix(&[0]).unwrap_or(pem);
    text.trim_ascii() == WEB_ROOTS_PEM.as_bytes().trim_ascii()
}

/// Parses every `CERTIFICATE` block of `pem` and checks that each can be a trust anchor.
/// Other PEM blocks (keys, parameters) are ignored; at least one certificate is required.
/// [`WEB_ROOTS_PEM`] is accepted too (in a build with TLS).
pub fn check_ca_pem(pem: &[u8]) -> Result<(), CaPemError> {
    if is_web_roots(pem) {
        return if cfg!(feature = "tls") {
            Ok(())
        } else {
            Err(CaPemError::NoTls)
        };
    }
    imp::parse_ca_pem(pem).map(drop)
}

pub(crate) use imp::*;

#[cfg(feature = "tls")]
mod imp {
    use std::borrow::Cow;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{
        CryptoProvider, GetRandomFailed, KeyProvider, SecureRandom, WebPkiSupportedAlgorithms,
    };
    use rustls::pki_types::{
        pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime,
    };
    use rustls::sign::SigningKey;
    use rustls::{DigitallySignedStruct, SignatureScheme, SupportedCipherSuite};
    use webpki::ring as alg;

    use super::CaPemError;

    /// Trust anchors parsed from a PEM.
    #[derive(Clone)]
    pub struct CaRoots(pub Vec<CertificateDer<'static>>);

    pub fn parse_ca_pem(pem: &[u8]) -> Result<CaRoots, CaPemError> {
        let mut certs = Vec::new();
        for der in CertificateDer::pem_slice_iter(pem) {
            let der = der.map_err(|_| CaPemError::Malformed)?;
            webpki::anchor_from_trusted_cert(&der).map_err(|_| CaPemError::NotAnAnchor)?;
            certs.push(der);
        }
        if certs.is_empty() {
            return Err(CaPemError::NoCertificate);
        }
        Ok(CaRoots(certs))
    }

    /// Verifies the server's chain against `anchors` and its name, as rustls' own
    /// `WebPkiServerVerifier` does (no revocation lists, as there), but over a borrowed slice:
    /// the bundled web roots are used where they lie in the binary instead of being copied
    /// into a `RootCertStore` (8.6 KB of heap per configuration).
    #[derive(Debug)]
    struct AnchorVerifier {
        anchors: Cow<'static, [TrustAnchor<'static>]>,
    }

    impl AnchorVerifier {
        fn new(roots: Option<&CaRoots>) -> Result<AnchorVerifier, CaPemError> {
            let anchors = match roots {
                None => Cow::Borrowed(webpki_roots::TLS_SERVER_ROOTS),
                Some(certs) => Cow::Owned(
                    certs
                        .0
                        .iter()
                        .map(|der| {
                            webpki::anchor_from_trusted_cert(der)
                                .map(|a| a.to_owned())
                                .map_err(|_| CaPemError::NotAnAnchor)
                        })
                        .collect::<Result<_, _>>()?,
                ),
            };
            Ok(AnchorVerifier { anchors })
        }
    }

    impl ServerCertVerifier for AnchorVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
            cert.verify_for_usage(
                SIGNATURE_ALGORITHMS.all,
                &self.anchors,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(pki_error)?;
            cert.verify_is_valid_for_subject_name(server_name)
                .map_err(pki_error)?;
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &SIGNATURE_ALGORITHMS)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &SIGNATURE_ALGORITHMS)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            SIGNATURE_ALGORITHMS.supported_schemes()
        }
    }

    /// A webpki verdict as the rustls error a handshake fails with (the common cases by
    /// name, the rest as `Other`).
    fn pki_error(e: webpki::Error) -> rustls::Error {
        use rustls::CertificateError as C;
        use webpki::Error as W;
        let c = match e {
            W::BadDer | W::BadDerTime | W::TrailingData(_) => C::BadEncoding,
            W::CertExpired { .. } | W::InvalidCertValidity => C::Expired,
            W::CertNotValidYet { .. } => C::NotValidYet,
            W::UnknownIssuer => C::UnknownIssuer,
            W::CertNotValidForName(_) => C::NotValidForName,
            W::InvalidSignatureForPublicKey => C::BadSignature,
            W::RequiredEkuNotFoundContext(_) => C::InvalidPurpose,
            other => C::Other(rustls::OtherError(Arc::new(other))),
        };
        rustls::Error::InvalidCertificate(c)
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

    /// The operating system's random numbers, through ring.
    #[derive(Debug)]
    struct SystemRandom;

    impl SecureRandom for SystemRandom {
        fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), buf)
                .map_err(|_| GetRandomFailed)
        }
    }

    /// The cipher suites offered: AES-GCM, which every TLS 1.3 server must accept and every
    /// TLS 1.2 server of the four platforms does; ChaCha20-Poly1305 too with the
    /// `tls-chacha20` feature (for CPUs without AES instructions; about 50 KB of code).
    fn cipher_suites() -> Vec<SupportedCipherSuite> {
        use rustls::crypto::ring::cipher_suite as cs;
        let mut suites = vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ];
        if cfg!(feature = "tls-chacha20") {
            suites.extend([
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]);
        }
        suites
    }

    /// The server signatures accepted, the same as rustls' ring provider's: ECDSA on P-256
    /// and P-384, Ed25519, RSA PSS and PKCS#1 with 2048- to 8192-bit keys. Written out here
    /// because taking them from `rustls::crypto::ring::default_provider()` links that
    /// provider's private-key loaders (RSA, ECDSA and Ed25519 signing) as well.
    static SIGNATURE_ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
        all: &[
            alg::ECDSA_P256_SHA256,
            alg::ECDSA_P256_SHA384,
            alg::ECDSA_P384_SHA256,
            alg::ECDSA_P384_SHA384,
            alg::ED25519,
            alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            alg::RSA_PKCS1_2048_8192_SHA256,
            alg::RSA_PKCS1_2048_8192_SHA384,
            alg::RSA_PKCS1_2048_8192_SHA512,
            alg::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
        ],
        mapping: &[
            // In TLS 1.2 the scheme does not fix the curve; in TLS 1.3 it does.
            (
                SignatureScheme::ECDSA_NISTP384_SHA384,
                &[alg::ECDSA_P384_SHA384, alg::ECDSA_P256_SHA384],
            ),
            (
                SignatureScheme::ECDSA_NISTP256_SHA256,
                &[alg::ECDSA_P256_SHA256, alg::ECDSA_P384_SHA256],
            ),
            (SignatureScheme::ED25519, &[alg::ED25519]),
            (
                SignatureScheme::RSA_PSS_SHA512,
                &[alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PSS_SHA384,
                &[alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PSS_SHA256,
                &[alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA512,
                &[alg::RSA_PKCS1_2048_8192_SHA512],
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA384,
                &[alg::RSA_PKCS1_2048_8192_SHA384],
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA256,
                &[alg::RSA_PKCS1_2048_8192_SHA256],
            ),
        ],
    };

    /// ring's AES-GCM suites, X25519/P-256/P-384 key exchange and the signature checks above.
    /// Given explicitly: rustls panics when it has to pick a provider itself and finds two in
    /// the build.
    pub fn provider() -> Arc<CryptoProvider> {
        use rustls::crypto::ring::kx_group;
        static NO_KEYS: NoClientKeys = NoClientKeys;
        static RANDOM: SystemRandom = SystemRandom;
        Arc::new(CryptoProvider {
            cipher_suites: cipher_suites(),
            kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
            signature_verification_algorithms: SIGNATURE_ALGORITHMS,
            secure_random: &RANDOM,
            key_provider: &NO_KEYS,
        })
    }

    /// Whether `io` carries a rustls error (how a TLS stream reports handshake failures).
    pub fn is_tls_io_error(io: &std::io::Error) -> bool {
        io.get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
    }

    /// The download's TLS settings: chain and host name verified against `roots`, or the
    /// bundled web roots (Mozilla's, from `webpki-roots`). The traffic keys may be handed
    /// over after the handshake: the download opens its records itself (`tls_link`).
    pub fn http_config(roots: Option<&CaRoots>) -> Result<Arc<rustls::ClientConfig>, CaPemError> {
        let mut config = client_config(AnchorVerifier::new(roots)?)?;
        config.enable_secret_extraction = true;
        Ok(Arc::new(config))
    }

    fn client_config(verifier: AnchorVerifier) -> Result<rustls::ClientConfig, CaPemError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|_| CaPemError::NoTls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(small_session_cache(config))
    }

    /// A device talks to one firmware host (and perhaps its redirect target) and one broker:
    /// rustls' default cache of 256 sessions costs 8.6 KB at init, two keep resumption.
    fn small_session_cache(mut config: rustls::ClientConfig) -> rustls::ClientConfig {
        config.resumption = rustls::client::Resumption::in_memory_sessions(2);
        config
    }

    /// The MQTT connection's TLS settings, trusting exactly the certificates in `ca_pem`.
    /// The MQTT connection's TLS settings: trusting exactly the certificates of `ca_pem`, or
    /// the bundled web roots when it is [`WEB_ROOTS_PEM`](super::WEB_ROOTS_PEM).
    pub fn mqtt_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, CaPemError> {
        let roots = if super::is_web_roots(ca_pem) {
            None
        } else {
            Some(parse_ca_pem(ca_pem)?)
        };
        client_config(AnchorVerifier::new(roots.as_ref())?).map(Arc::new)
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

    #[test]
    fn the_provider_checks_signatures_like_rustls_ring_and_offers_aes_gcm() {
        let ours = provider();
        let ring = rustls::crypto::ring::default_provider();
        let (a, b) = (
            &ours.signature_verification_algorithms,
            &ring.signature_verification_algorithms,
        );
        assert_eq!(format!("{:?}", a.all), format!("{:?}", b.all));
        assert_eq!(format!("{:?}", a.mapping), format!("{:?}", b.mapping));
        assert_eq!(a.all.len(), 14);
        assert_eq!(
            format!("{:?}", ours.kx_groups),
            format!("{:?}", ring.kx_groups)
        );
        let names: Vec<String> = ours
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert!(names.iter().any(|n| n == "TLS13_AES_128_GCM_SHA256"));
        assert!(names
            .iter()
            .any(|n| n == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"));
        let chacha = names.iter().filter(|n| n.contains("CHACHA20")).count();
        assert_eq!(chacha, if cfg!(feature = "tls-chacha20") { 3 } else { 0 });
        assert_eq!(ours.cipher_suites.len(), 6 + chacha);
        let mut random = [0u8; 32];
        ours.secure_random.fill(&mut random).unwrap();
        assert_ne!(random, [0u8; 32]);
        let key = rcgen::KeyPair::generate().unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        assert!(ours.key_provider.load_private_key(der).is_err());
    }
}
