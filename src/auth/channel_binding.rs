//! `tls-server-end-point` channel binding data (RFC 5929 §4.1).
//!
//! The binding data is the hash of the server's DER certificate, with the hash function taken
//! from the certificate's signature algorithm: MD5 and SHA-1 are upgraded to SHA-256, any other
//! single hash is used as is. Algorithms without one hash (Ed25519, Ed448) have no defined
//! binding; PostgreSQL and libpq fail the exchange for them, and so does this function.
//!
//! pglink's server side hashes its own certificate once per certificate load; the client side
//! hashes each backend's certificate after the TLS handshake. The signature algorithm is read
//! from the outer `Certificate.signatureAlgorithm` with a small checked DER walker (no X.509
//! crate): only three levels of structure are needed.

use std::fmt;

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// Why no channel binding data could be computed for a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertHashError {
    /// The bytes are not a DER X.509 certificate; `what` names the part.
    Malformed(&'static str),
    /// The signature algorithm (dotted OID) has no single hash function RFC 5929 could use.
    UnsupportedSignatureAlgorithm(String),
}

impl fmt::Display for CertHashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed certificate: {what}"),
            Self::UnsupportedSignatureAlgorithm(oid) => write!(
                f,
                "certificate signature algorithm {oid} has no tls-server-end-point hash"
            ),
        }
    }
}

impl std::error::Error for CertHashError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashAlg {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha224 => Sha224::digest(data).to_vec(),
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => Sha384::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

// OID contents (DER value bytes, without tag and length).
const PKCS1: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
const X9_62_ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
const X9_62_ECDSA_SHA2: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
const X9_57_DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
const NIST_DSA_SHA2: [u8; 8] = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03];
const NIST_HASH: [u8; 8] = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];
const OIW_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const OIW_SHA1_RSA: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1d];
const RSA_MD5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x05];

/// Splits `oid` into `prefix` and the rest.
fn arc<'a>(oid: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    oid.strip_prefix(prefix)
}

/// The binding hash for a signature algorithm OID (`params` = the AlgorithmIdentifier's
/// parameters, needed for RSASSA-PSS).
fn hash_for(oid: &[u8], params: &[u8]) -> Result<HashAlg, CertHashError> {
    use HashAlg::*;
    let found = match oid {
        o if o == X9_62_ECDSA_SHA1 || o == X9_57_DSA_SHA1 || o == OIW_SHA1_RSA => Some(Sha256),
        o => match (
            arc(o, &PKCS1),
            arc(o, &X9_62_ECDSA_SHA2),
            arc(o, &NIST_DSA_SHA2),
        ) {
            // md5WithRSA (4), sha1WithRSA (5): upgraded to SHA-256.
            (Some([4 | 5]), _, _) => Some(Sha256),
            (Some([10]), _, _) => return pss_hash(params),
            (Some([11]), _, _) | (_, Some([2]), _) | (_, _, Some([2])) => Some(Sha256),
            (Some([12]), _, _) | (_, Some([3]), _) | (_, _, Some([3])) => Some(Sha384),
            (Some([13]), _, _) | (_, Some([4]), _) | (_, _, Some([4])) => Some(Sha512),
            (Some([14]), _, _) | (_, Some([1]), _) | (_, _, Some([1])) => Some(Sha224),
            _ => None,
        },
    };
    found.ok_or_else(|| CertHashError::UnsupportedSignatureAlgorithm(dotted(oid)))
}

/// A hash algorithm OID as it appears in RSASSA-PSS parameters.
fn hash_oid(oid: &[u8]) -> Option<HashAlg> {
    if oid == OIW_SHA1 || oid == RSA_MD5 {
        return Some(HashAlg::Sha256);
    }
    match arc(oid, &NIST_HASH)? {
        [1] => Some(HashAlg::Sha256),
        [2] => Some(HashAlg::Sha384),
        [3] => Some(HashAlg::Sha512),
        [4] => Some(HashAlg::Sha224),
        _ => None,
    }
}

/// `RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] HashAlgorithm DEFAULT sha1, ... }`
/// (RFC 4055). The parameters are mandatory in certificates.
fn pss_hash(params: &[u8]) -> Result<HashAlg, CertHashError> {
    let bad = CertHashError::Malformed;
    let (tag, seq, rest) = tlv(params)?;
    if tag != SEQUENCE || !rest.is_empty() {
        return Err(bad("RSASSA-PSS parameters are not a SEQUENCE"));
    }
    if seq.first() != Some(&0xa0) {
        // hashAlgorithm absent: the default, SHA-1, which binds as SHA-256.
        return Ok(HashAlg::Sha256);
    }
    let (_, explicit, _) = tlv(seq)?;
    let (tag, alg, _) = tlv(explicit)?;
    if tag != SEQUENCE {
        return Err(bad(
            "RSASSA-PSS hashAlgorithm is not an AlgorithmIdentifier",
        ));
    }
    let (tag, oid, _) = tlv(alg)?;
    if tag != OID {
        return Err(bad("RSASSA-PSS hashAlgorithm has no OID"));
    }
    hash_oid(oid).ok_or_else(|| CertHashError::UnsupportedSignatureAlgorithm(dotted(oid)))
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BIT_STRING: u8 = 0x03;

/// Reads one DER TLV: `(tag, contents, rest)`. Only low tag numbers and definite lengths of up
/// to four bytes, every length checked against the input.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), CertHashError> {
    let bad = CertHashError::Malformed;
    let [tag, first_len, rest @ ..] = input else {
        return Err(bad("truncated TLV header"));
    };
    if tag & 0x1f == 0x1f {
        return Err(bad("high tag number"));
    }
    let (len, rest) = match *first_len {
        n @ 0..=0x7f => (usize::from(n), rest),
        0x80 => return Err(bad("indefinite length")),
        n => {
            let count = usize::from(n & 0x7f);
            if count > 4 {
                return Err(bad("length too long"));
            }
            let (len_bytes, rest) = rest
                .split_at_checked(count)
                .ok_or(bad("truncated length"))?;
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, rest)
        }
    };
    let (contents, rest) = rest.split_at_checked(len).ok_or(bad("length past end"))?;
    Ok((*tag, contents, rest))
}

/// The `tls-server-end-point` channel binding data of a DER-encoded X.509 certificate.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, CertHashError> {
    let bad = CertHashError::Malformed;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (tag, cert, trailing) = tlv(cert_der)?;
    if tag != SEQUENCE || !trailing.is_empty() {
        return Err(bad("not a single DER SEQUENCE"));
    }
    let (tag, _tbs, rest) = tlv(cert)?;
    if tag != SEQUENCE {
        return Err(bad("tbsCertificate is not a SEQUENCE"));
    }
    let (tag, alg, rest) = tlv(rest)?;
    if tag != SEQUENCE {
        return Err(bad("signatureAlgorithm is not a SEQUENCE"));
    }
    let (tag, _sig, rest) = tlv(rest)?;
    if tag != BIT_STRING || !rest.is_empty() {
        return Err(bad("signatureValue is not the last element, a BIT STRING"));
    }
    // AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters ANY OPTIONAL }
    let (tag, oid, params) = tlv(alg)?;
    if tag != OID || oid.is_empty() {
        return Err(bad("signatureAlgorithm has no OID"));
    }
    Ok(hash_for(oid, params)?.digest(cert_der))
}

/// Dotted form of an OID for error messages (best effort; never panics).
fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for b in oid {
        acc = acc.saturating_mul(128).saturating_add(u64::from(b & 0x7f));
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = acc.min(80) / 40;
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    let parts: Vec<String> = arcs.iter().map(u64::to_string).collect();
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// (fixture, expected binding) with the expected value from
    /// `openssl x509 -noout -fingerprint -<hash>` (see testdata/README.md).
    const FIXTURES: &[(&str, &[u8], &str)] = &[
        (
            "rsa_md5",
            include_bytes!("testdata/rsa_md5.der"),
            "1ee52a84cf849d13c360f41ca4793b04b765e38693460bca2dac4737ad63ad9b",
        ),
        (
            "rsa_sha1",
            include_bytes!("testdata/rsa_sha1.der"),
            "00a64538395ce5bc30e5fad32512687b22000fae37f22a22e77d47362ce5e2b4",
        ),
        (
            "rsa_sha224",
            include_bytes!("testdata/rsa_sha224.der"),
            "e697a937135137fdf18341391c724705516b0cf4721442799b06965d",
        ),
        (
            "rsa_sha256",
            include_bytes!("testdata/rsa_sha256.der"),
            "4bcb41b817253b7ad1c1cc50e612edfb823c193c9bd7633992b3e007fbd4115c",
        ),
        (
            "rsa_sha384",
            include_bytes!("testdata/rsa_sha384.der"),
            "c89023f94dea8d9ca61990d2f23c7d0c0d22be83add99447e9f81b545d8e58c4276342aabe2b246e511c68ef691ff19e",
        ),
        (
            "rsa_sha512",
            include_bytes!("testdata/rsa_sha512.der"),
            "d9e8bbca0b1ca50bfd5480b6bb67a7b7efe882cdc694e7e4fc0a0072cb687d35bd23894de0f340bda61a7652287c0399d4fe0489185b317228b684109bc1bb06",
        ),
        (
            "ecdsa_p256_sha1",
            include_bytes!("testdata/ecdsa_p256_sha1.der"),
            "861635354adc71c94efa88600d4859b9b5df10ab453b1d01e7a68e773b45926d",
        ),
        (
            "ecdsa_p256_sha256",
            include_bytes!("testdata/ecdsa_p256_sha256.der"),
            "210f12e07a0c311ec771d9f0a9df4c3e45517f95ca6cee4f06414f3acd4487e3",
        ),
        (
            "ecdsa_p384_sha384",
            include_bytes!("testdata/ecdsa_p384_sha384.der"),
            "4f00b927a8e5b6049744afb5348b81e7b3c1cf7042c74765689cac8adcc0af945409e5887be1b46a57a21772ea0ad6a3",
        ),
        (
            "ecdsa_p384_sha512",
            include_bytes!("testdata/ecdsa_p384_sha512.der"),
            "ec9ca9361031445a0689f0ed4a99c1e63ec46721f38083229b9c1e597efd05d9ba058808c1341eba6705db73c38a7a97fd659b41d420712c7f33300608a45764",
        ),
        (
            "rsa_pss_sha384",
            include_bytes!("testdata/rsa_pss_sha384.der"),
            "e1aa1d69d48091eb8eac3f64a9f0d361ef01a956f43bee5e34d47509d44280c4ab8a6e60ed9da5cd586e9282fc9a3654",
        ),
        (
            "pg15_server_rsa2048_sha384",
            include_bytes!("testdata/pg15_server_rsa2048_sha384.der"),
            "dc3f2183f3c405321a0bf2bd7b05dc17a646a7b484ec5410b04077329485ee4dcf4f82088aa3976d1772746a6c1c99ad",
        ),
        (
            "rsa_pss_default",
            include_bytes!("testdata/rsa_pss_default.der"),
            "e2b579cf2a3762a4ca1831d66af8ea86b8fb48c2ebebedd9c863f94ac3a07090",
        ),
    ];

    #[test]
    fn fixtures_match_openssl_fingerprints() {
        for (name, der, expected) in FIXTURES {
            let got = tls_server_end_point(der).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(hex(&got), *expected, "{name}");
        }
    }

    #[test]
    fn ed25519_is_rejected() {
        let der = include_bytes!("testdata/ed25519.der");
        assert_eq!(
            tls_server_end_point(der),
            Err(CertHashError::UnsupportedSignatureAlgorithm(
                "1.3.101.112".into()
            ))
        );
    }

    #[test]
    fn pss_without_parameters_is_malformed() {
        // Outer AlgorithmIdentifier { rsassaPss } with the parameters removed.
        let alg = [&[0x06, 0x09][..], &PKCS1, &[10]].concat();
        let mut cert = vec![0x30, 0x00];
        cert.extend([0x30, alg.len() as u8]);
        cert.extend(&alg);
        cert.extend([0x03, 0x01, 0x00]);
        let der = [&[0x30, cert.len() as u8][..], &cert].concat();
        assert!(matches!(
            tls_server_end_point(&der),
            Err(CertHashError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_algorithm_names_its_oid() {
        // md2WithRSAEncryption 1.2.840.113549.1.1.2
        let alg = [&[0x06, 0x09][..], &PKCS1, &[2], &[0x05, 0x00]].concat();
        let cert = [
            &[0x30, 0x00, 0x30, alg.len() as u8][..],
            &alg,
            &[0x03, 0x01, 0x00],
        ]
        .concat();
        let der = [&[0x30, cert.len() as u8][..], &cert].concat();
        assert_eq!(
            tls_server_end_point(&der),
            Err(CertHashError::UnsupportedSignatureAlgorithm(
                "1.2.840.113549.1.1.2".into()
            ))
        );
    }

    #[test]
    fn malformed_inputs_error_without_panicking() {
        let good = include_bytes!("testdata/rsa_sha256.der");
        let mut inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x30],
            vec![0x30, 0x80, 0x00, 0x00],
            vec![0x30, 0x85, 1, 1, 1, 1, 1],
            vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            vec![0x1f, 0x01, 0x00],
            vec![0x31, 0x00],
            vec![0x30, 0x00],
            [good.as_slice(), &[0]].concat(),
        ];
        for cut in [1, 2, 4, 10, good.len() / 2, good.len() - 1] {
            inputs.push(good[..cut].to_vec());
        }
        for i in 0..good.len() {
            let mut flipped = good.to_vec();
            flipped[i] ^= 0xff;
            inputs.push(flipped);
        }
        for input in &inputs {
            // Bit flips inside the tbsCertificate still hash; the rest must error.
            let _ = tls_server_end_point(input);
        }
        for input in &inputs[..inputs.len() - good.len()] {
            assert!(tls_server_end_point(input).is_err(), "{input:02x?}");
        }
    }

    #[test]
    fn dotted_oid() {
        assert_eq!(dotted(&[0x2b, 0x65, 0x70]), "1.3.101.112");
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]),
            "1.2.840.113549.1.1.11"
        );
        assert_eq!(dotted(&[0x88, 0x37]), "2.999");
        assert_eq!(dotted(&[]), "");
    }
}
