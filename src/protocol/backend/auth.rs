//! Authentication ('R'): the request family and the builders for what pglink asks of clients.

use super::tag;
use crate::protocol::{
    DecodeError,
    cursor::{CStrs, Cursor},
    write::{put_cstr, put_u32, write_message},
};

/// Authentication request codes (the Int32 after the 'R' length).
pub mod auth_code {
    pub const OK: u32 = 0;
    pub const KERBEROS_V5: u32 = 2;
    pub const CLEARTEXT_PASSWORD: u32 = 3;
    pub const MD5_PASSWORD: u32 = 5;
    pub const GSS: u32 = 7;
    pub const GSS_CONTINUE: u32 = 8;
    pub const SSPI: u32 = 9;
    pub const SASL: u32 = 10;
    pub const SASL_CONTINUE: u32 = 11;
    pub const SASL_FINAL: u32 = 12;
}

/// Authentication ('R').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication<'a> {
    Ok,
    KerberosV5,
    CleartextPassword,
    Md5Password { salt: [u8; 4] },
    Gss,
    GssContinue { data: &'a [u8] },
    Sspi,
    Sasl(SaslMechanisms<'a>),
    SaslContinue { data: &'a [u8] },
    SaslFinal { data: &'a [u8] },
}

/// The mechanism list of AuthenticationSASL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslMechanisms<'a> {
    /// NUL-terminated names, without the list's final extra NUL; validated.
    raw: &'a [u8],
}

impl<'a> SaslMechanisms<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        CStrs::new(self.raw)
    }

    pub fn contains(&self, mechanism: &[u8]) -> bool {
        self.iter().any(|m| m == mechanism)
    }
}

pub(super) fn decode_authentication<'a>(
    c: &mut Cursor<'a>,
) -> Result<Authentication<'a>, DecodeError> {
    use Authentication as A;
    let code = c.u32("authentication code")?;
    Ok(match code {
        auth_code::OK => A::Ok,
        auth_code::KERBEROS_V5 => A::KerberosV5,
        auth_code::CLEARTEXT_PASSWORD => A::CleartextPassword,
        auth_code::MD5_PASSWORD => {
            let salt = c.bytes(4, "md5 salt")?;
            A::Md5Password {
                salt: salt.try_into().unwrap_or_default(),
            }
        }
        auth_code::GSS => A::Gss,
        auth_code::GSS_CONTINUE => A::GssContinue { data: c.rest()? },
        auth_code::SSPI => A::Sspi,
        auth_code::SASL => {
            let start = c.remaining();
            while !c.cstr("SASL mechanism")?.is_empty() {}
            let with_terminator = c.since(start);
            let raw = with_terminator.split_last().map(|(_, r)| r);
            A::Sasl(SaslMechanisms {
                raw: raw.unwrap_or_default(),
            })
        }
        auth_code::SASL_CONTINUE => A::SaslContinue { data: c.rest()? },
        auth_code::SASL_FINAL => A::SaslFinal { data: c.rest()? },
        other => return Err(c.invalid("authentication code", other)),
    })
}

pub(super) fn encode_authentication(a: &Authentication<'_>, out: &mut Vec<u8>) {
    use Authentication as A;
    let (code, data): (u32, &[u8]) = match a {
        A::Ok => (auth_code::OK, &[]),
        A::KerberosV5 => (auth_code::KERBEROS_V5, &[]),
        A::CleartextPassword => (auth_code::CLEARTEXT_PASSWORD, &[]),
        A::Md5Password { salt } => (auth_code::MD5_PASSWORD, salt),
        A::Gss => (auth_code::GSS, &[]),
        A::GssContinue { data } => (auth_code::GSS_CONTINUE, data),
        A::Sspi => (auth_code::SSPI, &[]),
        A::Sasl(m) => {
            return write_message(out, tag::AUTHENTICATION, |b| {
                put_u32(b, auth_code::SASL);
                b.extend_from_slice(m.raw);
                b.push(0);
            });
        }
        A::SaslContinue { data } => (auth_code::SASL_CONTINUE, data),
        A::SaslFinal { data } => (auth_code::SASL_FINAL, data),
    };
    authentication(out, code, data);
}

fn authentication(out: &mut Vec<u8>, code: u32, data: &[u8]) {
    write_message(out, tag::AUTHENTICATION, |b| {
        put_u32(b, code);
        b.extend_from_slice(data);
    });
}

pub fn authentication_ok(out: &mut Vec<u8>) {
    authentication(out, auth_code::OK, &[]);
}

pub fn authentication_cleartext(out: &mut Vec<u8>) {
    authentication(out, auth_code::CLEARTEXT_PASSWORD, &[]);
}

pub fn authentication_md5(out: &mut Vec<u8>, salt: [u8; 4]) {
    authentication(out, auth_code::MD5_PASSWORD, &salt);
}

/// AuthenticationSASL offering `mechanisms` (e.g. `SCRAM-SHA-256-PLUS`, `SCRAM-SHA-256`).
pub fn authentication_sasl(out: &mut Vec<u8>, mechanisms: &[&[u8]]) {
    write_message(out, tag::AUTHENTICATION, |b| {
        put_u32(b, auth_code::SASL);
        mechanisms.iter().for_each(|m| put_cstr(b, m));
        b.push(0);
    });
}

pub fn sasl_continue(out: &mut Vec<u8>, data: &[u8]) {
    authentication(out, auth_code::SASL_CONTINUE, data);
}

pub fn sasl_final(out: &mut Vec<u8>, data: &[u8]) {
    authentication(out, auth_code::SASL_FINAL, data);
}
