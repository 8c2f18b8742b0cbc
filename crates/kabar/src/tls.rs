//! TLS: loading the configured certificate or generating a private CA and a certificate for the
//! domain on first start, and the channel-binding data SCRAM-PLUS needs (RFC 9266, RFC 5929).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kabar_sasl::ChannelBindings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use tokio_rustls::TlsAcceptor;

pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// DER of the end-entity certificate, for tls-server-end-point.
    leaf: Vec<u8>,
    pub ca_path: Option<PathBuf>,
}

impl Tls {
    pub fn load(config: &kabar_core::Config, data_dir: &Path) -> Result<Tls> {
        let (cert_path, key_path, ca_path) = match (&config.tls.cert, &config.tls.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone(), None),
            (None, None) => {
                let dir = data_dir.join("tls");
                let paths = generate_if_missing(&dir, &config.domain)?;
                (paths.0, paths.1, Some(paths.2))
            }
            _ => bail!("tls.cert and tls.key must be set together (or both left out to use a generated certificate)"),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| format!("reading certificate {}", cert_path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing certificate {}", cert_path.display()))?;
        let Some(leaf) = certs.first().map(|c| c.to_vec()) else {
            bail!("{} holds no certificate", cert_path.display());
        };
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("reading private key {}", key_path.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("certificate and key do not match or are unsupported")?;
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(server_config)), leaf, ca_path })
    }

    /// Channel-binding data of an established server connection.
    pub fn channel_bindings(&self, conn: &rustls::ServerConnection) -> ChannelBindings {
        // RFC 9266 §3: tls-exporter is defined for TLS 1.3 only (TLS 1.2 needs extended master
        // secret, which we cannot confirm through rustls' API), so it is offered only there.
        let tls_exporter = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None).ok().map(|k| k.to_vec())
        } else {
            None
        };
        ChannelBindings { tls_exporter, tls_server_end_point: Some(server_end_point_hash(&self.leaf)) }
    }
}

/// RFC 5929 §4.1: the certificate hashed with its signature's hash, SHA-256 for MD5/SHA-1.
fn server_end_point_hash(der: &[u8]) -> Vec<u8> {
    const SHA384_OIDS: [&[u8]; 2] = [
        &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03],
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0C],
    ];
    const SHA512_OIDS: [&[u8]; 2] = [
        &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x04],
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0D],
    ];
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    if SHA512_OIDS.iter().any(|o| has(o)) {
        sha2::Sha512::digest(der).to_vec()
    } else if SHA384_OIDS.iter().any(|o| has(o)) {
        sha2::Sha384::digest(der).to_vec()
    } else {
        sha2::Sha256::digest(der).to_vec()
    }
}

/// Creates `ca.pem`, `cert.pem` and `key.pem` under `dir` unless `cert.pem` exists.
fn generate_if_missing(dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let ca_path = dir.join("ca.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path, ca_path));
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("kabar private CA for {domain}"));
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut names = vec![domain.to_string()];
    if domain != "localhost" {
        names.push("localhost".into());
    }
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, domain);
    params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    fs::write(&ca_path, ca.pem())?;
    fs::write(&cert_path, cert.pem())?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    Ok((cert_path, key_path, ca_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}
