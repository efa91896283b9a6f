//! The self-signed certificate Parley makes on first start when none is configured.

use anyhow::Context;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Paths of the certificate chain and key in use.
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// True when this start generated them.
    pub generated: bool,
}

/// Makes a self-signed certificate for `domain` in `dir` unless one is already there.
pub fn ensure_self_signed(dir: &Path, domain: &str) -> anyhow::Result<CertificatePaths> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok(CertificatePaths {
            cert,
            key,
            generated: false,
        });
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = vec![domain.to_owned()];
    if domain != "localhost" {
        names.push(format!("*.{domain}"));
    }
    let certified =
        rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    write_private(&key, certified.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, certified.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    Ok(CertificatePaths {
        cert,
        key,
        generated: true,
    })
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// SHA-256 fingerprint of the first certificate in a PEM file, as clients show it (AB:CD:...).
pub fn fingerprint(cert_path: &Path) -> anyhow::Result<String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::from_pem_file(cert_path)
        .with_context(|| format!("reading the certificate {}", cert_path.display()))?;
    let digest = Sha256::digest(der.as_ref());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}
