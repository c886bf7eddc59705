//! Certificates made at test time with rcgen (ring): a CA and what it signs, plus an unrelated
//! CA, so TLS tests need no key material checked in.

use std::sync::OnceLock;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, both PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything the TLS tests trust or present.
pub struct Pki {
    /// The CA that signs every leaf below.
    pub ca_pem: String,
    /// A CA that signed nothing here.
    pub other_ca_pem: String,
    /// Valid for `localhost` and 127.0.0.1.
    pub server: Leaf,
    /// Valid, but only for `firmware.example.com`.
    pub other_host: Leaf,
    /// For `localhost` and 127.0.0.1, but expired in 2001.
    pub expired: Leaf,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).expect("CA certificate").pem();
    (pem, Issuer::new(params, key))
}

fn leaf(issuer: &Issuer<'_, KeyPair>, names: &[&str], expired: bool) -> Leaf {
    let key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, &names[0]);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if expired {
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
    }
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

impl Pki {
    pub fn generate() -> Pki {
        let (ca_pem, issuer) = ca("ota test CA");
        let (other_ca_pem, _) = ca("unrelated test CA");
        let local = ["localhost", "127.0.0.1"];
        Pki {
            ca_pem,
            other_ca_pem,
            server: leaf(&issuer, &local, false),
            other_host: leaf(&issuer, &["firmware.example.com"], false),
            expired: leaf(&issuer, &local, true),
        }
    }
}

/// The certificates of this test process, made on first use.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(Pki::generate)
}
