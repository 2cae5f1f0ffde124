//! `keyfed pki`: a small federation certificate authority. `init` makes the
//! CA, `issue` signs a node (or administrator) certificate whose CN and SAN
//! are the name a node checks against the id its peer claims.
use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The CA's subject. `issue` rebuilds the issuer name from this (rcgen
/// cannot read a CA certificate back without the x509-parser feature), so
/// it must never change for an existing CA.
const CA_NAME: &str = "keyfed federation CA";
const CA_YEARS: i32 = 10;
const LEAF_DAYS: i64 = 825;

#[derive(Debug, clap::Subcommand)]
pub enum PkiCmd {
    /// Create a federation CA: DIR/ca.pem and DIR/ca.key (0600).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate for a node id (or an administrator name) signed by
    /// the CA in DIR: DIR/NAME.pem and DIR/NAME.key (0600).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// node id or administrator name; becomes the CN and a DNS SAN
        #[arg(long)]
        name: String,
        /// extra DNS names (repeatable); default localhost
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses (repeatable); default 127.0.0.1
        #[arg(long)]
        ip: Vec<IpAddr>,
    },
    /// Create the CA in DIR if there is none, then a certificate for each
    /// NAME that has none; what exists is kept, so it can run on every start
    /// (the compose federation's one-shot `pki` service).
    Ensure {
        #[arg(long)]
        dir: PathBuf,
        /// node ids, the upstream's service name and administrator names
        #[arg(long = "name", required = true)]
        names: Vec<String>,
    },
    /// Print the sha256 of a token read from stdin, for `token_sha256`.
    HashToken,
}

pub fn run_cli(cmd: PkiCmd) -> anyhow::Result<()> {
    match cmd {
        PkiCmd::Init { dir } => {
            init(&dir)?;
            println!("{}", dir.join("ca.pem").display());
        }
        PkiCmd::Issue { dir, name, dns, ip } => {
            let (cert, _) = issue(&dir, &name, &dns, &ip)?;
            println!("{}", cert.display());
        }
        PkiCmd::Ensure { dir, names } => {
            if !dir.join("ca.key").exists() {
                init(&dir)?;
                println!("{}", dir.join("ca.pem").display());
            }
            for name in names {
                if !dir.join(format!("{name}.pem")).exists() {
                    let (cert, _) = issue(&dir, &name, &[], &[])?;
                    println!("{}", cert.display());
                }
            }
        }
        PkiCmd::HashToken => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token)?;
            println!(
                "{}",
                crate::auth::sha256_hex(token.trim_end_matches(['\r', '\n']))
            );
        }
    }
    Ok(())
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// Certificates are checked by rustls against the system time, so they are
/// issued on the system clock, not the node's injected one; a day back
/// absorbs clock skew between machines.
fn validity(p: &mut CertificateParams, days: i64) {
    use chrono::Datelike;
    let ymd = |d: chrono::DateTime<chrono::Utc>| {
        rcgen::date_time_ymd(
            d.year(),
            u8::try_from(d.month()).unwrap_or(1),
            u8::try_from(d.day()).unwrap_or(1),
        )
    };
    let now = chrono::Utc::now();
    p.not_before = ymd(now - chrono::Duration::days(1));
    p.not_after = ymd(now + chrono::Duration::days(days));
}

/// Writes a private key readable by its owner only.
fn write_key(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    // an existing file keeps its old mode on open; set it explicitly
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

/// Creates `dir/ca.pem` and `dir/ca.key`; refuses to overwrite a CA.
pub fn init(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_path = dir.join("ca.key");
    if key_path.exists() {
        bail!(
            "{} already exists; a new CA would invalidate every certificate it signed",
            key_path.display()
        );
    }
    let key = KeyPair::generate()?;
    let mut p = ca_params()?;
    validity(&mut p, i64::from(CA_YEARS) * 365);
    let cert = p.self_signed(&key)?;
    write_key(&key_path, &key.serialize_pem())?;
    std::fs::write(dir.join("ca.pem"), cert.pem())?;
    Ok(())
}

/// Issues `dir/<name>.pem` and `dir/<name>.key` signed by the CA in `dir`.
/// CN = `name`; SANs: `name` (as a DNS name, so compose service names
/// work), `dns` (default localhost) and `ips` (default 127.0.0.1).
pub fn issue(
    dir: &Path,
    name: &str,
    dns: &[String],
    ips: &[IpAddr],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("{name:?} is not usable as a certificate name and file name");
    }
    let ca_key_pem = std::fs::read_to_string(dir.join("ca.key")).with_context(|| {
        format!(
            "reading the CA key in {} (run `keyfed pki init` first)",
            dir.display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("ca.key is not a PEM private key")?;
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem"))
        .with_context(|| format!("reading {}", dir.join("ca.pem").display()))?;
    let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .context("ca.pem is not a PEM certificate")?;
    if !contains(&ca_der, ca_key.public_key_raw()) {
        bail!("ca.key does not belong to ca.pem in {}", dir.display());
    }
    let issuer = Issuer::new(ca_params()?, ca_key);

    let mut sans = vec![name.to_owned()];
    if dns.is_empty() {
        sans.push("localhost".into());
    }
    sans.extend(dns.iter().cloned());
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    for s in sans {
        let n = SanType::DnsName(
            s.clone()
                .try_into()
                .with_context(|| format!("{s:?} is not a DNS name"))?,
        );
        if !p.subject_alt_names.contains(&n) {
            p.subject_alt_names.push(n);
        }
    }
    let default_ip = [IpAddr::from([127, 0, 0, 1])];
    let ips = if ips.is_empty() { &default_ip[..] } else { ips };
    p.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // a node is a server to its children and a client of its parent
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, LEAF_DAYS);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    write_key(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())?;
    Ok((cert_path, key_path))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_writes_private_keys_owner_only_and_refuses_a_second_ca() {
        let d = tempfile::tempdir().unwrap();
        init(d.path()).unwrap();
        let (cert, key) = issue(d.path(), "main", &[], &[]).unwrap();
        assert!(cert.ends_with("main.pem") && key.ends_with("main.key"));
        #[cfg(unix)]
        for k in ["ca.key", "main.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.path().join(k))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{k}");
        }
        let err = init(d.path()).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_file(&cert).unwrap();
        let ee = webpki::EndEntityCert::try_from(&der).unwrap();
        for ok in ["main", "localhost", "127.0.0.1"] {
            let n = rustls_pki_types::ServerName::try_from(ok).unwrap();
            assert!(ee.verify_is_valid_for_subject_name(&n).is_ok(), "{ok}");
        }
        let other = rustls_pki_types::ServerName::try_from("child").unwrap();
        assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
    }
}
