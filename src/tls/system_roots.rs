//! `sslrootcert=system`: the platform's trust store, found where OpenSSL finds its default
//! store (so where libpq finds it).

use std::fs;
use std::path::{Path, PathBuf};

use rustls::RootCertStore;

use super::{TlsError, add_root, load_certs};

/// Root certificate bundles tried for `sslrootcert=system` when `SSL_CERT_FILE` is not set, in
/// place of OpenSSL's compiled-in default file (Debian/Ubuntu, RHEL/Fedora, Alpine/macOS).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Hashed-certificate directories read for `sslrootcert=system` when `SSL_CERT_DIR` is not
/// set, in place of OpenSSL's compiled-in default directory.
const SYSTEM_CA_DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];

/// Where `sslrootcert=system` reads the platform's trust store: what OpenSSL's
/// `X509_STORE_set_default_paths` reads, which is what libpq uses for `system`.
///
/// - One bundle file: `$SSL_CERT_FILE` when set, otherwise the first of the usual
///   distribution bundles that exists.
/// - Hashed directories (`c_rehash` / `openssl rehash` names, `<8 hex digits>.<n>`):
///   `$SSL_CERT_DIR` when set (a `:`-separated list), otherwise the usual system directory.
///
/// Both are read, as OpenSSL reads both: setting `SSL_CERT_FILE` to a private CA adds it to
/// what the system directory already trusts. A certificate found twice counts once. The
/// variables and files are read when a backend's TLS configuration is built (at startup, and
/// at a reload that changes that backend), not per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemRoots {
    file: Option<PathBuf>,
    /// `SSL_CERT_FILE` named the file (then it must be readable).
    file_from_env: bool,
    dirs: Vec<PathBuf>,
}

impl SystemRoots {
    /// From this process's `SSL_CERT_FILE` and `SSL_CERT_DIR`.
    pub fn from_env() -> SystemRoots {
        SystemRoots::new(
            std::env::var_os("SSL_CERT_FILE"),
            std::env::var_os("SSL_CERT_DIR"),
        )
    }

    /// From given values of `SSL_CERT_FILE` and `SSL_CERT_DIR` (empty counts as unset).
    pub fn new(
        cert_file: Option<std::ffi::OsString>,
        cert_dir: Option<std::ffi::OsString>,
    ) -> SystemRoots {
        let cert_file = cert_file.filter(|f| !f.is_empty());
        let file_from_env = cert_file.is_some();
        let file = cert_file.map(PathBuf::from).or_else(|| {
            SYSTEM_CA_BUNDLES
                .iter()
                .map(Path::new)
                .find(|p| p.is_file())
                .map(Path::to_owned)
        });
        let dirs = match cert_dir.filter(|d| !d.is_empty()) {
            Some(d) => std::env::split_paths(&d)
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
            None => SYSTEM_CA_DIRS
                .iter()
                .map(Path::new)
                .filter(|p| p.is_dir())
                .map(Path::to_owned)
                .collect(),
        };
        SystemRoots {
            file,
            file_from_env,
            dirs,
        }
    }

    /// Reads the certificates. A file named by `SSL_CERT_FILE` that cannot be read, or holds
    /// a certificate webpki cannot use as an anchor, is an error; in the distribution's
    /// bundle such a certificate is skipped, as is a directory entry that is not a
    /// certificate (OpenSSL would only notice it when looking that hash up). No certificate
    /// at all is an error.
    pub fn load(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        let mut seen = std::collections::HashSet::new();
        if let Some(file) = &self.file {
            for cert in load_certs(file)? {
                if seen.insert(cert.as_ref().to_vec()) {
                    if self.file_from_env {
                        // Named on purpose (SSL_CERT_FILE): every certificate must be usable.
                        add_root(&mut store, cert, file)?;
                    } else if let Err(e) = store.add(cert) {
                        // One a distribution bundle has but webpki cannot use as an anchor
                        // is skipped, not the whole store.
                        log::debug!("{}: a certificate skipped: {e}", file.display());
                    }
                }
            }
        }
        for dir in &self.dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(is_hashed_cert_name))
                .map(|e| e.path())
                .collect();
            names.sort();
            for path in names {
                for cert in load_certs(&path).into_iter().flatten() {
                    if seen.insert(cert.as_ref().to_vec()) {
                        // A certificate webpki cannot use as an anchor is skipped.
                        let _ = store.add(cert);
                    }
                }
            }
        }
        if store.is_empty() {
            return Err(TlsError::NoSystemRoots {
                tried: self.describe(),
            });
        }
        Ok(store)
    }

    fn describe(&self) -> String {
        let file = match &self.file {
            Some(path) if self.file_from_env => format!("SSL_CERT_FILE {}", path.display()),
            Some(path) => path.display().to_string(),
            None => format!(
                "no bundle file (looked for {})",
                SYSTEM_CA_BUNDLES.join(", ")
            ),
        };
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        if dirs.is_empty() {
            format!("{file} and no certificate directory (set SSL_CERT_FILE or SSL_CERT_DIR)")
        } else {
            format!("{file} and directories {}", dirs.join(", "))
        }
    }
}

/// OpenSSL's hashed directory names for certificates: `<8 hex digits>.<decimal>`
/// (`<hash>.r<n>` are revocation lists).
fn is_hashed_cert_name(name: &str) -> bool {
    match name.split_once('.') {
        Some((hash, n)) => {
            hash.len() == 8
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tls::tests::tmpdir;

    fn self_signed_pem(name: &str) -> String {
        rcgen::generate_simple_self_signed(vec![name.to_owned()])
            .unwrap()
            .cert
            .pem()
    }

    #[test]
    fn hashed_certificate_names_are_openssls() {
        for ok in ["002c0b4f.0", "ABCDEF01.12"] {
            assert!(is_hashed_cert_name(ok), "{ok}");
        }
        for not in [
            "002c0b4f.r0",
            "002c0b4.0",
            "002c0b4f",
            "ca.pem",
            "002c0b4g.0",
            "x.0",
        ] {
            assert!(!is_hashed_cert_name(not), "{not}");
        }
    }

    #[test]
    fn system_roots_read_ssl_cert_file_and_dir_as_openssl_does() {
        let dir = tmpdir("system");
        let a_pem = self_signed_pem("a.example");
        let b_pem = self_signed_pem("b.example");
        let c_pem = self_signed_pem("c.example");
        fs::write(dir.join("bundle.pem"), &a_pem).unwrap();
        let certs = dir.join("certs");
        fs::create_dir(&certs).unwrap();
        // A hashed name counts, the same certificate again counts once, other names and
        // files that are not certificates are ignored (as OpenSSL's lookup by hash would).
        fs::write(certs.join("0a1b2c3d.0"), &b_pem).unwrap();
        fs::write(certs.join("0a1b2c3d.1"), &a_pem).unwrap();
        fs::write(certs.join("c.pem"), &c_pem).unwrap();
        fs::write(certs.join("ffffffff.0"), "not a certificate").unwrap();
        let anchors = |roots: &SystemRoots| roots.load().unwrap().roots.len();

        let both = SystemRoots::new(
            Some(dir.join("bundle.pem").into()),
            Some(std::env::join_paths([dir.join("nowhere"), certs.clone()]).unwrap()),
        );
        assert_eq!(anchors(&both), 2);
        // Unset (or empty) variables mean the usual places; a set one replaces only its part.
        let dir_only = SystemRoots::new(Some("".into()), Some(certs.clone().into()));
        assert_eq!(dir_only.dirs, vec![certs.clone()]);
        assert!(!dir_only.file_from_env);
        assert_eq!(
            anchors(&SystemRoots {
                file: None,
                ..dir_only
            }),
            2
        );

        // SSL_CERT_FILE naming a missing file is an error naming it, not a silent fallback.
        let missing = SystemRoots::new(Some(dir.join("missing.pem").into()), None);
        let err = missing.load().unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");

        // Nothing found anywhere: says where it looked.
        let empty_dir = dir.join("empty");
        fs::create_dir(&empty_dir).unwrap();
        let nothing = SystemRoots {
            file: None,
            file_from_env: false,
            dirs: vec![empty_dir.clone()],
        };
        let err = nothing.load().unwrap_err().to_string();
        assert!(
            err.starts_with("sslrootcert=system: no CA certificate found in no bundle file")
                && err.contains(&empty_dir.display().to_string()),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
