//! A certificate chain made at test time: a CA, and a leaf for the test domain signed by it.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

pub struct TestCa {
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_path: PathBuf,
}

impl TestCa {
    /// Writes `ca.pem`, `cert.pem` (leaf + CA) and `key.pem` into `dir`; the leaf is valid for
    /// `domain`, `localhost`, 127.0.0.1 and ::1.
    pub fn generate(dir: &Path, domain: &str) -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Parley Test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut names = vec![
            domain.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.dedup();
        let mut leaf_params = CertificateParams::new(names)?;
        leaf_params.distinguished_name.push(DnType::CommonName, domain);
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;

        std::fs::create_dir_all(dir)?;
        let ca_path = dir.join("ca.pem");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&ca_path, ca_cert.pem())?;
        std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca_cert.pem()))?;
        std::fs::write(&key_path, leaf_key.serialize_pem())?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_path,
            key_path,
            ca_path,
        })
    }

    /// A rustls client configuration that trusts only this CA.
    pub fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(cert.expect("the test CA is valid PEM"))
                .expect("the test CA is a valid certificate");
        }
        std::sync::Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}
