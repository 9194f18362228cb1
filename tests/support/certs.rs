//! A throwaway PKI for tests: one CA, a server certificate and a client certificate signed by
//! it, all ECDSA P-256 generated with rcgen. Nothing is cached: every call makes fresh keys.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Subject alternative names of the default server certificate.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Common name of the CA certificate.
const CA_COMMON_NAME: &str = "pglink test CA";

/// A certificate and its private key, both in PEM, plus the certificate's DER.
#[derive(Clone, Debug)]
pub struct LeafCert {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
}

/// A CA with one server and one client certificate.
#[derive(Clone, Debug)]
pub struct TestCerts {
    pub ca_cert_pem: String,
    pub ca_cert_der: Vec<u8>,
    ca_key_pem: String,
    /// Server certificate for [`SERVER_NAMES`] (extended key usage serverAuth).
    pub server: LeafCert,
    /// Client certificate (extended key usage clientAuth).
    pub client: LeafCert,
}

impl TestCerts {
    /// A fresh CA, a server certificate for [`SERVER_NAMES`] and a client certificate whose
    /// CN is `client_cn` (PostgreSQL `cert` auth maps the CN to the role name).
    pub fn generate(client_cn: &str) -> TestCerts {
        let ca_key = KeyPair::generate().expect("generate CA key");
        let ca_cert = ca_params().self_signed(&ca_key).expect("self-sign CA");
        let mut certs = TestCerts {
            ca_cert_pem: ca_cert.pem(),
            ca_cert_der: ca_cert.der().to_vec(),
            ca_key_pem: ca_key.serialize_pem(),
            server: empty_leaf(),
            client: empty_leaf(),
        };
        certs.server = certs.issue_server(&SERVER_NAMES);
        certs.client = certs.issue_client(client_cn);
        certs
    }

    /// Another server certificate signed by this CA, e.g. for the proxy's own listener.
    pub fn issue_server(&self, names: &[&str]) -> LeafCert {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server SANs");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Another client certificate signed by this CA, with common name `cn`.
    pub fn issue_client(&self, cn: &str) -> LeafCert {
        let mut params = CertificateParams::new(Vec::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> LeafCert {
        params.use_authority_key_identifier_extension = true;
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).expect("parse CA key");
        let issuer = Issuer::new(ca_params(), ca_key);
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        LeafCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The CA's parameters; deterministic, so an [`Issuer`] can be rebuilt from the stored key.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::new(Vec::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn empty_leaf() -> LeafCert {
    LeafCert {
        cert_pem: String::new(),
        cert_der: Vec::new(),
        key_pem: String::new(),
    }
}
