//! TLS configuration for both sides of the proxy (rustls on *ring*).
//!
//! - Client side: pglink is the TLS server. The certificate comes from PEM files or is generated
//!   with rcgen (`generate_cert`), optionally written to the configured paths with the key at
//!   mode 0600. ALPN `postgresql` is offered so PostgreSQL 17's direct TLS works.
//! - Backend side: pglink is the TLS client with libpq's `sslmode` semantics. `require` encrypts
//!   without checking the certificate (unless a root certificate is given, which libpq then
//!   checks like `verify-ca`), `verify-ca` checks the chain, `verify-full` the chain and the
//!   host name (sent as SNI). `sslrootcert=system` trusts the platform's CA store, found the
//!   way OpenSSL (and so libpq) finds its default store: see [`SystemRoots`].
//!
//! Record I/O is not here: the reactor drives `rustls::Connection`s over its sockets.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// ALPN protocol name PostgreSQL uses (required for direct TLS connections).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The `sslrootcert` value that means the platform's trust store, as in libpq.
pub const SYSTEM_ROOT_CERT: &str = "system";

mod system_roots;
pub use system_roots::SystemRoots;

/// Errors building TLS configuration. They name the file involved.
#[derive(Debug)]
pub enum TlsError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    NoCertificates {
        path: PathBuf,
    },
    BadCertificate {
        path: PathBuf,
        detail: String,
    },
    NoPrivateKey {
        path: PathBuf,
    },
    BadPrivateKey {
        path: PathBuf,
        detail: String,
    },
    /// The key is encrypted but no `sslpassword` was given, or it was wrong.
    EncryptedKey {
        path: PathBuf,
        detail: String,
    },
    Generate(String),
    Rustls(rustls::Error),
    /// A verifying sslmode without any root certificate to verify against.
    NoRootCertificate {
        mode: &'static str,
    },
    /// `sslrootcert=system` found no certificate; says where it looked.
    NoSystemRoots {
        tried: String,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            TlsError::Write { path, error } => {
                write!(f, "cannot write {}: {error}", path.display())
            }
            TlsError::NoCertificates { path } => {
                write!(f, "{}: no PEM certificate found", path.display())
            }
            TlsError::BadCertificate { path, detail } => {
                write!(f, "{}: invalid certificate: {detail}", path.display())
            }
            TlsError::NoPrivateKey { path } => {
                write!(f, "{}: no PEM private key found", path.display())
            }
            TlsError::BadPrivateKey { path, detail } => {
                write!(f, "{}: invalid private key: {detail}", path.display())
            }
            TlsError::EncryptedKey { path, detail } => {
                write!(f, "{}: encrypted private key: {detail}", path.display())
            }
            TlsError::Generate(detail) => write!(f, "generating a certificate failed: {detail}"),
            TlsError::Rustls(e) => write!(f, "TLS configuration rejected: {e}"),
            TlsError::NoRootCertificate { mode } => write!(
                f,
                "sslmode {mode} needs sslrootcert (a PEM file of trusted CA certificates, or \"system\")"
            ),
            TlsError::NoSystemRoots { tried } => {
                write!(f, "sslrootcert=system: no CA certificate found in {tried}")
            }
        }
    }
}

impl std::error::Error for TlsError {}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

/// The crypto provider every config uses: *ring*, so no C toolchain (aws-lc) is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// The leaf certificate (what channel binding hashes).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // Constructors guarantee a non-empty chain.
        &self.chain[0]
    }
}

/// Where the client-facing certificate comes from.
#[derive(Debug, Clone, Default)]
pub struct ServerIdentitySource {
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    pub generate: bool,
}

/// Loads the client-facing identity: from the PEM files when they exist, otherwise generated
/// (and written to the paths when both are set), per `tls.generate_cert`.
pub fn load_server_identity(src: &ServerIdentitySource) -> Result<Identity, TlsError> {
    match (&src.cert_path, &src.key_path) {
        (Some(cert), Some(key)) if cert.exists() && key.exists() => load_identity(cert, key, None),
        (Some(cert), Some(key)) if src.generate => {
            let generated = generate_self_signed()?;
            write_new_file(cert, generated.cert_pem.as_bytes(), 0o644)?;
            write_new_file(key, generated.key_pem.as_bytes(), 0o600)?;
            Ok(generated.identity)
        }
        (Some(cert), Some(key)) => {
            let missing = if cert.exists() { key } else { cert };
            Err(TlsError::Read {
                path: missing.clone(),
                error: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }
        _ => Ok(generate_self_signed()?.identity),
    }
}

/// A freshly generated self-signed certificate.
pub struct Generated {
    pub identity: Identity,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Generates a self-signed ECDSA P-256 certificate for `localhost` and the machine's host name.
pub fn generate_self_signed() -> Result<Generated, TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_owned());
        }
    }
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let key_der = certified.signing_key.serialize_der();
    Ok(Generated {
        cert_pem: certified.cert.pem(),
        key_pem: certified.signing_key.serialize_pem(),
        identity: Identity {
            chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
        },
    })
}

/// Writes a file that must not exist yet, with the given mode from the start (no window in
/// which a private key is world-readable).
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |error| TlsError::Write {
        path: path.to_owned(),
        error,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Reads a certificate chain and private key from PEM files. An encrypted PKCS#8 key
/// (`BEGIN ENCRYPTED PRIVATE KEY`) is decrypted with `password`.
pub fn load_identity(
    cert_path: &Path,
    key_path: &Path,
    password: Option<&str>,
) -> Result<Identity, TlsError> {
    let chain = load_certs(cert_path)?;
    let key = load_private_key(key_path, password)?;
    Ok(Identity { chain, key })
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

/// All certificates in a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_private_key(
    path: &Path,
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return decrypt_pkcs8(path, &text, password);
    }
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(TlsError::EncryptedKey {
            path: path.to_owned(),
            detail: "legacy OpenSSL PEM encryption is not supported; convert the key with \
                     `openssl pkcs8 -topk8 -v2 aes-256-cbc -in OLD -out NEW`"
                .to_owned(),
        });
    }
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey {
            path: path.to_owned(),
        }),
        Err(e) => Err(TlsError::BadPrivateKey {
            path: path.to_owned(),
            detail: e.to_string(),
        }),
    }
}

fn decrypt_pkcs8(
    path: &Path,
    pem: &str,
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let err = |detail: String| TlsError::EncryptedKey {
        path: path.to_owned(),
        detail,
    };
    let Some(password) = password else {
        return Err(err("no sslpassword configured".to_owned()));
    };
    // Decode the PEM armour first: the DER decoder cannot parse straight from a PEM reader.
    let (_label, der) = pkcs8::der::Document::from_pem(pem).map_err(|e| err(e.to_string()))?;
    // PBES2 (AES or 3DES, PBKDF2 or scrypt) is understood; the PKCS#12 PBE schemes
    // (`openssl pkcs8 -v1 ...`) are not and fail to parse here.
    let encrypted = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der.as_bytes()).map_err(|e| {
        err(format!(
            "{e}: unsupported encryption scheme; re-encrypt it with \
             `openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out NEW`"
        ))
    })?;
    let document = encrypted
        .decrypt(password)
        .map_err(|e| err(format!("cannot decrypt (wrong sslpassword?): {e}")))?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        document.as_bytes().to_vec(),
    )))
}

/// The rustls server configuration for client connections.
pub fn server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    // Session resumption is pointless for a handful of long-lived connections per client and
    // would complicate channel binding reasoning; PostgreSQL's server does not offer it either.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// How much of the backend's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt only (libpq `require`/`prefer`/`allow` without a root certificate).
    Nothing,
    /// The chain must lead to a trusted root (libpq `verify-ca`).
    Chain,
    /// Chain and host name (libpq `verify-full`).
    ChainAndName,
}

/// Backend TLS settings after applying libpq's rules.
#[derive(Debug, Clone, Default)]
pub struct BackendTlsSource {
    /// `sslrootcert`: a PEM path, or `system`.
    pub root_cert: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub key_password: Option<String>,
}

/// Builds the rustls client configuration for backend connections.
pub fn backend_client_config(
    verify: Verify,
    src: &BackendTlsSource,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let roots = match (&src.root_cert, verify) {
        (Some(root), _) => Some(load_roots(root)?),
        (None, Verify::Nothing) => None,
        (None, Verify::Chain) => return Err(TlsError::NoRootCertificate { mode: "verify-ca" }),
        (None, Verify::ChainAndName) => {
            return Err(TlsError::NoRootCertificate {
                mode: "verify-full",
            });
        }
    };
    // libpq: with a root certificate present, `require` verifies the chain like verify-ca.
    let verify = match (verify, &roots) {
        (Verify::Nothing, Some(_)) => Verify::Chain,
        (v, _) => v,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (verify, roots) {
        (Verify::Nothing, _) | (_, None) => Arc::new(AcceptAnyCertificate { algorithms }),
        (verify, Some(roots)) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
            Arc::new(ChainVerifier {
                inner: webpki,
                check_name: verify == Verify::ChainAndName,
            })
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&src.client_cert, &src.client_key) {
        (Some(cert), Some(key)) => {
            let identity = load_identity(cert, key, src.key_password.as_deref())?;
            builder.with_client_auth_cert(identity.chain, identity.key)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// The rustls client configuration for an OTLP collector: its certificate chain checked
/// against the certificates of the PEM file `root` (`None`: the system's trust store, as
/// `sslrootcert=system` reads it) and its name against the host pglink connects to;
/// `client`: the certificate chain and key files pglink shows a collector that asks. No ALPN
/// protocols: the caller's connector sets them.
pub fn collector_client_config(
    root: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = match root {
        Some(path) => load_root_file(path)?,
        None => SystemRoots::from_env().load()?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client {
        Some((cert, key)) => {
            let identity = load_identity(cert, key, None)?;
            builder.with_client_auth_cert(identity.chain, identity.key)?
        }
        None => builder.with_no_client_auth(),
    })
}

fn load_roots(root: &str) -> Result<RootCertStore, TlsError> {
    if root == SYSTEM_ROOT_CERT {
        return SystemRoots::from_env().load();
    }
    load_root_file(Path::new(root))
}

/// Every certificate of the PEM file `path` as a trust anchor (each must be usable as one).
fn load_root_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(path)? {
        add_root(&mut store, cert, path)?;
    }
    Ok(store)
}

fn add_root(
    store: &mut RootCertStore,
    cert: CertificateDer<'static>,
    path: &Path,
) -> Result<(), TlsError> {
    store.add(cert).map_err(|e| TlsError::BadCertificate {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// `sslmode=require` without a root certificate: the connection is encrypted but the peer is
/// not authenticated (exactly libpq's behaviour). Handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// webpki chain verification; for `verify-ca` a host-name mismatch is accepted.
#[derive(Debug)]
struct ChainVerifier {
    inner: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server name to verify and send as SNI for a backend host (an IP address is not sent
/// as SNI, per RFC 6066).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|e| {
        TlsError::Rustls(rustls::Error::General(format!(
            "invalid backend host name {host:?} for TLS: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory for one test's files (also `system_roots`' tests).
    pub(super) fn tmpdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pglink-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generated_identity_is_written_once_with_private_key_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tmpdir("gen");
        let src = ServerIdentitySource {
            cert_path: Some(dir.join("cert.pem")),
            key_path: Some(dir.join("key.pem")),
            generate: true,
        };
        let first = load_server_identity(&src).unwrap();
        let mode = fs::metadata(dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Second start loads the same certificate instead of generating a new one.
        let second = load_server_identity(&src).unwrap();
        assert_eq!(first.leaf(), second.leaf());
        server_config(&second).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_files_without_generate_name_the_file() {
        let dir = tmpdir("missing");
        let src = ServerIdentitySource {
            cert_path: Some(dir.join("nope.pem")),
            key_path: Some(dir.join("key.pem")),
            generate: false,
        };
        let err = load_server_identity(&src).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn verifying_modes_need_a_root_certificate() {
        let err = backend_client_config(Verify::ChainAndName, &BackendTlsSource::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("verify-full"), "{err}");
        backend_client_config(Verify::Nothing, &BackendTlsSource::default()).unwrap();
    }

    #[test]
    fn encrypted_pkcs8_key_needs_the_right_password() {
        // Key generated with: openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 |
        //   openssl pkcs8 -topk8 -v2 aes-256-cbc -passout pass:secret
        let dir = tmpdir("enc");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>/dev/null | \
                 openssl pkcs8 -topk8 -v2 aes-256-cbc -passout pass:secret -out {}",
                dir.join("key.pem").display()
            ))
            .status();
        assert!(
            matches!(out, Ok(s) if s.success()),
            "the openssl command line tool is needed to make an encrypted test key"
        );
        let path = dir.join("key.pem");
        assert!(load_private_key(&path, Some("secret")).is_ok());
        let wrong = load_private_key(&path, Some("wrong"))
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("wrong sslpassword"), "{wrong}");
        let none = load_private_key(&path, None).unwrap_err().to_string();
        assert!(none.contains("no sslpassword"), "{none}");
        // Other schemes OpenSSL produces: PBES2 with 3DES works, PKCS#12 PBE is explained.
        for (args, ok) in [("-v2 des3", true), ("-v1 PBE-SHA1-3DES", false)] {
            let out = dir.join("other.pem");
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>/dev/null | \
                     openssl pkcs8 -topk8 {args} -passout pass:secret -out {}",
                    out.display()
                ))
                .status()
                .unwrap();
            assert!(status.success());
            let loaded = load_private_key(&out, Some("secret"));
            if ok {
                assert!(loaded.is_ok(), "{args}: {:?}", loaded.err());
            } else {
                let e = loaded.unwrap_err().to_string();
                assert!(e.contains("unsupported encryption scheme"), "{args}: {e}");
            }
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
