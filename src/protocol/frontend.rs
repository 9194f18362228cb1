//! Client → server messages: tags, borrowed views, and builders.
//!
//! [`FrontendMessage::decode`] validates a whole body once; the views' iterators then cannot fail.
//! 'p' is context-dependent (password, SASL initial/continuation, GSS), so it decodes to the raw
//! [`PasswordFamily`]; the session, which knows what it asked for, picks the concrete decoder.

use super::{
    CopyData, DecodeError, I16s, Oids, Values,
    cursor::Cursor,
    write::{
        put_count, put_counted, put_cstr, put_i16, put_i32, put_u32, put_value, put_values,
        write_message,
    },
};

pub use super::startup::{cancel_request, gssenc_request, ssl_request, startup_message};
pub use super::{copy_data, copy_done};

/// Frontend message type bytes. ('D', 'C', 'E', 'H', 'S' mean other things from the backend.)
pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    /// PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse all use 'p'.
    pub const PASSWORD: u8 = b'p';
}

/// What Describe and Close refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// 'S': a prepared statement.
    Statement,
    /// 'P': a portal.
    Portal,
}

impl Target {
    pub fn as_byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }

    pub fn from_byte(b: u8) -> Option<Target> {
        match b {
            b'S' => Some(Target::Statement),
            b'P' => Some(Target::Portal),
            _ => None,
        }
    }
}

/// Query ('Q'): a simple-protocol query string (may hold several statements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    pub query: &'a [u8],
}

/// Parse ('P').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name; empty = the unnamed statement.
    pub name: &'a [u8],
    pub query: &'a [u8],
    param_types: &'a [u8],
}

impl<'a> Parse<'a> {
    /// Parameter type OIDs (0 = unspecified).
    pub fn param_types(&self) -> Oids<'a> {
        Oids::new(self.param_types)
    }

    pub fn param_type_count(&self) -> usize {
        self.param_types.len() / 4
    }

    /// Append this Parse under another statement name (prepared-statement renaming).
    pub fn encode_renamed(&self, out: &mut Vec<u8>, name: &[u8]) {
        write_message(out, tag::PARSE, |b| {
            put_cstr(b, name);
            put_cstr(b, self.query);
            put_counted(b, self.param_types, 4);
        });
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_renamed(out, self.name);
    }
}

/// Bind ('B').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal; empty = the unnamed portal.
    pub portal: &'a [u8],
    /// Source statement; empty = the unnamed statement.
    pub statement: &'a [u8],
    param_formats: &'a [u8],
    params: &'a [u8],
    param_count: u16,
    result_formats: &'a [u8],
}

impl<'a> Bind<'a> {
    /// The parameter format codes as sent: none (all text), one (applies to all), or one each.
    pub fn param_formats(&self) -> I16s<'a> {
        I16s::new(self.param_formats)
    }

    /// The format of parameter `i`, resolving the none/one/each rule.
    pub fn param_format(&self, i: usize) -> i16 {
        let mut formats = self.param_formats();
        match formats.len() {
            0 => 0,
            1 => formats.next().unwrap_or(0),
            _ => formats.nth(i).unwrap_or(0),
        }
    }

    /// Parameter values; `None` is NULL.
    pub fn params(&self) -> Values<'a> {
        Values::new(self.params, self.param_count)
    }

    pub fn param_count(&self) -> usize {
        usize::from(self.param_count)
    }

    /// Result column format codes (none, one for all, or one each).
    pub fn result_formats(&self) -> I16s<'a> {
        I16s::new(self.result_formats)
    }

    /// Append this Bind with another source statement name (prepared-statement renaming).
    pub fn encode_with_statement(&self, out: &mut Vec<u8>, statement: &[u8]) {
        write_message(out, tag::BIND, |b| {
            put_cstr(b, self.portal);
            put_cstr(b, statement);
            put_counted(b, self.param_formats, 2);
            put_count(b, usize::from(self.param_count));
            b.extend_from_slice(self.params);
            put_counted(b, self.result_formats, 2);
        });
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_with_statement(out, self.statement);
    }
}

/// Describe ('D').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Describe<'a> {
    pub target: Target,
    pub name: &'a [u8],
}

/// Execute ('E').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execute<'a> {
    pub portal: &'a [u8],
    /// Row limit; 0 = no limit.
    pub max_rows: i32,
}

/// Close ('C').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close<'a> {
    pub target: Target,
    pub name: &'a [u8],
}

/// CopyFail ('f').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyFail<'a> {
    pub message: &'a [u8],
}

/// FunctionCall ('F'), the fast-path interface (used by libpq's large-object functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionCall<'a> {
    pub function_oid: u32,
    arg_formats: &'a [u8],
    args: &'a [u8],
    arg_count: u16,
    pub result_format: i16,
}

impl<'a> FunctionCall<'a> {
    pub fn arg_formats(&self) -> I16s<'a> {
        I16s::new(self.arg_formats)
    }

    pub fn args(&self) -> Values<'a> {
        Values::new(self.args, self.arg_count)
    }

    pub fn arg_count(&self) -> usize {
        usize::from(self.arg_count)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        write_message(out, tag::FUNCTION_CALL, |b| {
            put_u32(b, self.function_oid);
            put_counted(b, self.arg_formats, 2);
            put_count(b, usize::from(self.arg_count));
            b.extend_from_slice(self.args);
            put_i16(b, self.result_format);
        });
    }
}

/// The undecoded body of a 'p' message; pick the decoder for what the server asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordFamily<'a> {
    pub body: &'a [u8],
}

impl<'a> PasswordFamily<'a> {
    pub fn password(&self) -> Result<PasswordMessage<'a>, DecodeError> {
        PasswordMessage::decode(self.body)
    }

    pub fn sasl_initial_response(&self) -> Result<SaslInitialResponse<'a>, DecodeError> {
        SaslInitialResponse::decode(self.body)
    }

    pub fn sasl_response(&self) -> SaslResponse<'a> {
        SaslResponse { data: self.body }
    }

    pub fn gss_response(&self) -> GssResponse<'a> {
        GssResponse { data: self.body }
    }
}

/// PasswordMessage ('p'): cleartext or md5-hashed password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordMessage<'a> {
    pub password: &'a [u8],
}

impl<'a> PasswordMessage<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut c = Cursor::new(tag::PASSWORD, body);
        let password = c.cstr("password")?;
        c.finish()?;
        Ok(PasswordMessage { password })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        password(out, self.password);
    }
}

/// SASLInitialResponse ('p').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    pub mechanism: &'a [u8],
    /// The client-first message; `None` when the length is -1.
    pub data: Option<&'a [u8]>,
}

impl<'a> SaslInitialResponse<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut c = Cursor::new(tag::PASSWORD, body);
        let mechanism = c.cstr("SASL mechanism")?;
        let data = c.value("SASL data")?;
        c.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        sasl_initial_response(out, self.mechanism, self.data);
    }
}

/// SASLResponse ('p'): the whole body is mechanism data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslResponse<'a> {
    pub data: &'a [u8],
}

impl<'a> SaslResponse<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(SaslResponse { data: body })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        sasl_response(out, self.data);
    }
}

/// GSSResponse ('p'): the whole body is GSSAPI/SSPI data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GssResponse<'a> {
    pub data: &'a [u8],
}

impl<'a> GssResponse<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(GssResponse { data: body })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        write_message(out, tag::PASSWORD, |b| b.extend_from_slice(self.data));
    }
}

/// Any client → server message after startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    Query(Query<'a>),
    Parse(Parse<'a>),
    Bind(Bind<'a>),
    Describe(Describe<'a>),
    Execute(Execute<'a>),
    Close(Close<'a>),
    Sync,
    Flush,
    CopyData(CopyData<'a>),
    CopyDone,
    CopyFail(CopyFail<'a>),
    FunctionCall(FunctionCall<'a>),
    Terminate,
    /// Any 'p' message; see [`PasswordFamily`].
    PasswordFamily(PasswordFamily<'a>),
}

impl<'a> FrontendMessage<'a> {
    /// Decode and fully validate one body.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut c = Cursor::new(tag, body);
        let msg = match tag {
            tag::QUERY => FrontendMessage::Query(Query {
                query: c.cstr("query")?,
            }),
            tag::PARSE => FrontendMessage::Parse(decode_parse(&mut c)?),
            tag::BIND => FrontendMessage::Bind(decode_bind(&mut c)?),
            tag::DESCRIBE => {
                let (target, name) = target_and_name(&mut c)?;
                FrontendMessage::Describe(Describe { target, name })
            }
            tag::EXECUTE => FrontendMessage::Execute(Execute {
                portal: c.cstr("portal name")?,
                max_rows: c.i32("row limit")?,
            }),
            tag::CLOSE => {
                let (target, name) = target_and_name(&mut c)?;
                FrontendMessage::Close(Close { target, name })
            }
            tag::SYNC => FrontendMessage::Sync,
            tag::FLUSH => FrontendMessage::Flush,
            tag::COPY_DATA => FrontendMessage::CopyData(CopyData { data: c.rest()? }),
            tag::COPY_DONE => FrontendMessage::CopyDone,
            tag::COPY_FAIL => FrontendMessage::CopyFail(CopyFail {
                message: c.cstr("error message")?,
            }),
            tag::FUNCTION_CALL => FrontendMessage::FunctionCall(decode_function_call(&mut c)?),
            tag::TERMINATE => FrontendMessage::Terminate,
            tag::PASSWORD => FrontendMessage::PasswordFamily(PasswordFamily { body: c.rest()? }),
            _ => return Err(DecodeError::UnknownTag { tag }),
        };
        c.finish()?;
        Ok(msg)
    }

    /// The type byte.
    pub fn tag(&self) -> u8 {
        match self {
            FrontendMessage::Query(_) => tag::QUERY,
            FrontendMessage::Parse(_) => tag::PARSE,
            FrontendMessage::Bind(_) => tag::BIND,
            FrontendMessage::Describe(_) => tag::DESCRIBE,
            FrontendMessage::Execute(_) => tag::EXECUTE,
            FrontendMessage::Close(_) => tag::CLOSE,
            FrontendMessage::Sync => tag::SYNC,
            FrontendMessage::Flush => tag::FLUSH,
            FrontendMessage::CopyData(_) => tag::COPY_DATA,
            FrontendMessage::CopyDone => tag::COPY_DONE,
            FrontendMessage::CopyFail(_) => tag::COPY_FAIL,
            FrontendMessage::FunctionCall(_) => tag::FUNCTION_CALL,
            FrontendMessage::Terminate => tag::TERMINATE,
            FrontendMessage::PasswordFamily(_) => tag::PASSWORD,
        }
    }

    /// Append the whole message (tag, length, body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            FrontendMessage::Query(m) => query(out, m.query),
            FrontendMessage::Parse(m) => m.encode(out),
            FrontendMessage::Bind(m) => m.encode(out),
            FrontendMessage::Describe(m) => describe(out, m.target, m.name),
            FrontendMessage::Execute(m) => execute(out, m.portal, m.max_rows),
            FrontendMessage::Close(m) => close(out, m.target, m.name),
            FrontendMessage::CopyData(m) => m.encode(out),
            FrontendMessage::CopyFail(m) => copy_fail(out, m.message),
            FrontendMessage::FunctionCall(m) => m.encode(out),
            FrontendMessage::PasswordFamily(m) => {
                write_message(out, tag::PASSWORD, |b| b.extend_from_slice(m.body))
            }
            FrontendMessage::Sync
            | FrontendMessage::Flush
            | FrontendMessage::CopyDone
            | FrontendMessage::Terminate => write_message(out, self.tag(), |_| {}),
        }
    }
}

fn target_and_name<'a>(c: &mut Cursor<'a>) -> Result<(Target, &'a [u8]), DecodeError> {
    let kind = c.u8("target kind")?;
    let target = Target::from_byte(kind).ok_or(c.invalid("target kind", kind))?;
    Ok((target, c.cstr("name")?))
}

fn decode_parse<'a>(c: &mut Cursor<'a>) -> Result<Parse<'a>, DecodeError> {
    let name = c.cstr("statement name")?;
    let query = c.cstr("query")?;
    let n = c.count("parameter type count")?;
    let param_types = c.array_region(n, 4, "parameter types")?;
    Ok(Parse {
        name,
        query,
        param_types,
    })
}

/// Format codes, then values: the format count must be 0, 1 or the value count (PostgreSQL
/// rejects anything else), which is what lets `param_format(i)` never fail.
fn formats_and_values<'a>(
    c: &mut Cursor<'a>,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8], u16), DecodeError> {
    let nfmt = c.count("format code count")?;
    let formats = c.array_region(nfmt, 2, "format codes")?;
    let n = c.count("value count")?;
    let values = c.values_region(n, what)?;
    if nfmt > 1 && nfmt != n {
        return Err(c.invalid("format code count", nfmt));
    }
    Ok((formats, values, n))
}

fn decode_bind<'a>(c: &mut Cursor<'a>) -> Result<Bind<'a>, DecodeError> {
    let portal = c.cstr("portal name")?;
    let statement = c.cstr("statement name")?;
    let (param_formats, params, param_count) = formats_and_values(c, "parameter value")?;
    let nres = c.count("result format count")?;
    let result_formats = c.array_region(nres, 2, "result format codes")?;
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
        param_count,
        result_formats,
    })
}

fn decode_function_call<'a>(c: &mut Cursor<'a>) -> Result<FunctionCall<'a>, DecodeError> {
    let function_oid = c.u32("function OID")?;
    let (arg_formats, args, arg_count) = formats_and_values(c, "argument value")?;
    let result_format = c.i16("result format")?;
    Ok(FunctionCall {
        function_oid,
        arg_formats,
        args,
        arg_count,
        result_format,
    })
}

// ---- builders ----------------------------------------------------------------------------

pub fn query(out: &mut Vec<u8>, query: &[u8]) {
    write_message(out, tag::QUERY, |b| put_cstr(b, query));
}

pub fn parse(out: &mut Vec<u8>, name: &[u8], query: &[u8], param_types: &[u32]) {
    write_message(out, tag::PARSE, |b| {
        put_cstr(b, name);
        put_cstr(b, query);
        put_count(b, param_types.len());
        param_types.iter().for_each(|&t| put_u32(b, t));
    });
}

/// Bind: `param_formats` and `result_formats` follow the none/one/each rule.
pub fn bind<'v>(
    out: &mut Vec<u8>,
    portal: &[u8],
    statement: &[u8],
    param_formats: &[i16],
    params: impl IntoIterator<Item = Option<&'v [u8]>>,
    result_formats: &[i16],
) {
    write_message(out, tag::BIND, |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        put_count(b, param_formats.len());
        param_formats.iter().for_each(|&f| put_i16(b, f));
        put_values(b, params);
        put_count(b, result_formats.len());
        result_formats.iter().for_each(|&f| put_i16(b, f));
    });
}

pub fn describe(out: &mut Vec<u8>, target: Target, name: &[u8]) {
    write_message(out, tag::DESCRIBE, |b| {
        b.push(target.as_byte());
        put_cstr(b, name);
    });
}

pub fn execute(out: &mut Vec<u8>, portal: &[u8], max_rows: i32) {
    write_message(out, tag::EXECUTE, |b| {
        put_cstr(b, portal);
        put_i32(b, max_rows);
    });
}

pub fn close(out: &mut Vec<u8>, target: Target, name: &[u8]) {
    write_message(out, tag::CLOSE, |b| {
        b.push(target.as_byte());
        put_cstr(b, name);
    });
}

pub fn sync(out: &mut Vec<u8>) {
    write_message(out, tag::SYNC, |_| {});
}

pub fn flush(out: &mut Vec<u8>) {
    write_message(out, tag::FLUSH, |_| {});
}

pub fn terminate(out: &mut Vec<u8>) {
    write_message(out, tag::TERMINATE, |_| {});
}

pub fn copy_fail(out: &mut Vec<u8>, message: &[u8]) {
    write_message(out, tag::COPY_FAIL, |b| put_cstr(b, message));
}

pub fn function_call<'v>(
    out: &mut Vec<u8>,
    function_oid: u32,
    arg_formats: &[i16],
    args: impl IntoIterator<Item = Option<&'v [u8]>>,
    result_format: i16,
) {
    write_message(out, tag::FUNCTION_CALL, |b| {
        put_u32(b, function_oid);
        put_count(b, arg_formats.len());
        arg_formats.iter().for_each(|&f| put_i16(b, f));
        put_values(b, args);
        put_i16(b, result_format);
    });
}

pub fn password(out: &mut Vec<u8>, password: &[u8]) {
    write_message(out, tag::PASSWORD, |b| put_cstr(b, password));
}

pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &[u8], data: Option<&[u8]>) {
    write_message(out, tag::PASSWORD, |b| {
        put_cstr(b, mechanism);
        put_value(b, data);
    });
}

pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    write_message(out, tag::PASSWORD, |b| b.extend_from_slice(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: &[u8]) -> FrontendMessage<'_> {
        let msg = FrontendMessage::decode(bytes[0], &bytes[5..]).unwrap();
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out, bytes);
        assert_eq!(msg.tag(), bytes[0]);
        msg
    }

    #[test]
    fn builders_round_trip() {
        let mut out = Vec::new();
        bind(
            &mut out,
            b"",
            b"s1",
            &[1],
            [Some(&b"\0\0\0\x2a"[..]), None],
            &[0, 1],
        );
        let FrontendMessage::Bind(b) = roundtrip(&out) else {
            panic!()
        };
        assert_eq!(b.statement, b"s1");
        assert_eq!(b.param_count(), 2);
        assert_eq!(
            b.params().collect::<Vec<_>>(),
            vec![Some(&b"\0\0\0\x2a"[..]), None]
        );
        assert_eq!((b.param_format(0), b.param_format(1)), (1, 1));
        assert_eq!(b.result_formats().collect::<Vec<_>>(), vec![0, 1]);

        let mut renamed = Vec::new();
        b.encode_with_statement(&mut renamed, b"pglink_7");
        let FrontendMessage::Bind(r) = roundtrip(&renamed) else {
            panic!()
        };
        assert_eq!(r.statement, b"pglink_7");
        assert_eq!(
            r.params().collect::<Vec<_>>(),
            b.params().collect::<Vec<_>>()
        );

        let builders: &[fn(&mut Vec<u8>)] = &[
            |o: &mut Vec<u8>| parse(o, b"s", b"SELECT $1", &[23]),
            |o: &mut Vec<u8>| describe(o, Target::Portal, b""),
            |o: &mut Vec<u8>| execute(o, b"", 0),
            |o: &mut Vec<u8>| close(o, Target::Statement, b"s"),
            sync,
            flush,
            terminate,
            |o: &mut Vec<u8>| copy_fail(o, b"nope"),
            |o: &mut Vec<u8>| copy_data(o, b"1\tx\n"),
            copy_done,
            |o: &mut Vec<u8>| query(o, b"SELECT 1"),
            |o: &mut Vec<u8>| function_call(o, 952, &[], [Some(&b"x"[..])], 1),
            |o: &mut Vec<u8>| password(o, b"md5abc"),
            |o: &mut Vec<u8>| sasl_response(o, b"c=biws"),
        ];
        for build in builders {
            let mut out = Vec::new();
            build(&mut out);
            roundtrip(&out);
        }
    }

    #[test]
    fn password_family_decoders() {
        let mut out = Vec::new();
        sasl_initial_response(&mut out, b"SCRAM-SHA-256", Some(b"n,,n=,r=abc"));
        let FrontendMessage::PasswordFamily(p) = roundtrip(&out) else {
            panic!()
        };
        let init = p.sasl_initial_response().unwrap();
        assert_eq!(init.mechanism, b"SCRAM-SHA-256");
        assert_eq!(init.data, Some(&b"n,,n=,r=abc"[..]));
        let mut again = Vec::new();
        init.encode(&mut again);
        assert_eq!(again, out);
        // The same bytes are not a valid PasswordMessage (data after the first NUL).
        assert!(p.password().is_err());

        let absent = SaslInitialResponse::decode(b"M\0\xff\xff\xff\xff").unwrap();
        assert_eq!(absent.data, None);
        assert!(matches!(
            SaslInitialResponse::decode(b"M\0\xff\xff\xff\xfe"),
            Err(DecodeError::InvalidValue { value: -2, .. })
        ));
        assert!(matches!(
            SaslInitialResponse::decode(b"M\0\0\0\0\x05abc"),
            Err(DecodeError::UnexpectedEof { .. })
        ));
        assert_eq!(PasswordMessage::decode(b"pw\0").unwrap().password, b"pw");
        assert_eq!(p.sasl_response().data, p.body);
        assert_eq!(p.gss_response().data, p.body);
    }

    #[test]
    fn rejects_malformed_bodies() {
        use DecodeError::*;
        let err = |tag: u8, body: &[u8]| FrontendMessage::decode(tag, body).unwrap_err();
        assert!(matches!(
            err(b'Q', b"SELECT 1"),
            MissingNul { tag: b'Q', .. }
        ));
        assert_eq!(
            err(b'Q', b"SELECT 1\0x"),
            TrailingBytes {
                tag: b'Q',
                extra: 1
            }
        );
        assert_eq!(
            err(b'S', b"\0"),
            TrailingBytes {
                tag: b'S',
                extra: 1
            }
        );
        assert_eq!(err(b'Z', b""), UnknownTag { tag: b'Z' });
        assert!(matches!(err(b'D', b"X\0"), InvalidValue { value: 88, .. }));
        assert!(matches!(err(b'E', b"\0\0\0"), UnexpectedEof { .. }));
        // Parse claims two parameter types but carries one.
        assert!(matches!(
            err(b'P', b"\0SELECT\0\0\x02\0\0\0\x17"),
            UnexpectedEof { .. }
        ));
        // Bind: negative length other than -1.
        assert!(matches!(
            err(b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"),
            InvalidValue { value: -2, .. }
        ));
        // Bind: two format codes for three parameters.
        assert!(matches!(
            err(
                b'B',
                b"\0\0\0\x02\0\0\0\0\0\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0\0"
            ),
            InvalidValue {
                what: "format code count",
                value: 2,
                ..
            }
        ));
        // Bind: value longer than the body.
        assert!(matches!(
            err(b'B', b"\0\0\0\0\0\x01\0\0\0\x09abc\0\0"),
            UnexpectedEof { .. }
        ));
        // Bind: result format count missing.
        assert!(matches!(err(b'B', b"\0\0\0\0\0\0"), UnexpectedEof { .. }));
    }

    #[test]
    fn views_expose_fields() {
        let mut out = Vec::new();
        parse(&mut out, b"stmt", b"SELECT $1, $2", &[23, 0]);
        let FrontendMessage::Parse(p) = roundtrip(&out) else {
            panic!()
        };
        assert_eq!(p.param_types().collect::<Vec<_>>(), vec![23, 0]);
        assert_eq!(p.param_type_count(), 2);
        let mut renamed = Vec::new();
        p.encode_renamed(&mut renamed, b"pglink_1");
        let FrontendMessage::Parse(r) = roundtrip(&renamed) else {
            panic!()
        };
        assert_eq!((r.name, r.query), (&b"pglink_1"[..], p.query));

        let mut out = Vec::new();
        execute(&mut out, b"c1", 100);
        assert_eq!(
            roundtrip(&out),
            FrontendMessage::Execute(Execute {
                portal: b"c1",
                max_rows: 100
            })
        );
        let mut out = Vec::new();
        function_call(&mut out, 955, &[1, 0], [Some(&b"a"[..]), None], 1);
        let FrontendMessage::FunctionCall(f) = roundtrip(&out) else {
            panic!()
        };
        assert_eq!(
            (f.function_oid, f.arg_count(), f.result_format),
            (955, 2, 1)
        );
        assert_eq!(f.arg_formats().collect::<Vec<_>>(), vec![1, 0]);
        assert_eq!(f.args().collect::<Vec<_>>(), vec![Some(&b"a"[..]), None]);
    }
}
