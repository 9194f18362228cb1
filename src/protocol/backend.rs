//! Server → client messages: tags, borrowed views, and builders.
//!
//! Same contract as [`frontend`](super::frontend): [`BackendMessage::decode`] validates a whole
//! body once, the views' iterators cannot fail afterwards, and `encode` reproduces every body
//! that decodes.

use super::{
    CopyData, DecodeError, ErrorFields, I16s, Oids, Values,
    cursor::{CStrs, Cursor},
    write::{
        put_count, put_counted, put_cstr, put_i16, put_i32, put_u32, put_value, put_values,
        write_message,
    },
};

mod auth;

pub use super::{copy_data, copy_done};
pub use auth::{
    Authentication, SaslMechanisms, auth_code, authentication_cleartext, authentication_md5,
    authentication_ok, authentication_sasl, sasl_continue, sasl_final,
};
use auth::{decode_authentication, encode_authentication};

/// Backend message type bytes. ('D', 'C', 'E', 'H', 'S' mean other things from the frontend.)
pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// The cancel key sizes PostgreSQL allows: 4 bytes in 3.0, up to 256 in 3.2.
pub const CANCEL_KEY_LEN: std::ops::RangeInclusive<usize> = 4..=256;

/// BackendKeyData ('K').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKeyData<'a> {
    pub pid: u32,
    /// 4 bytes in protocol 3.0, 4..=256 in 3.2.
    pub key: &'a [u8],
}

/// ParameterStatus ('S').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterStatus<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

/// Transaction status in ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// 'I': not in a transaction block.
    Idle,
    /// 'T': in a transaction block.
    InBlock,
    /// 'E': in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InBlock => b'T',
            TransactionStatus::Failed => b'E',
        }
    }

    pub fn from_byte(b: u8) -> Option<TransactionStatus> {
        match b {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InBlock),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }
}

/// ParameterDescription ('t').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterDescription<'a> {
    types: &'a [u8],
}

impl<'a> ParameterDescription<'a> {
    pub fn types(&self) -> Oids<'a> {
        Oids::new(self.types)
    }
}

/// RowDescription ('T').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowDescription<'a> {
    fields: &'a [u8],
    count: u16,
}

impl<'a> RowDescription<'a> {
    pub fn fields(&self) -> Fields<'a> {
        Fields {
            c: Cursor::new(0, self.fields),
            left: self.count,
        }
    }

    pub fn field_count(&self) -> usize {
        usize::from(self.count)
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    pub name: &'a [u8],
    /// Source table OID, or 0.
    pub table_oid: u32,
    /// Source column attribute number, or 0.
    pub column_attr: i16,
    pub type_oid: u32,
    /// `pg_type.typlen` (negative = variable width).
    pub type_size: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary (0 in replies to Describe of a statement).
    pub format: i16,
}

fn field_description<'a>(c: &mut Cursor<'a>) -> Result<FieldDescription<'a>, DecodeError> {
    Ok(FieldDescription {
        name: c.cstr("field name")?,
        table_oid: c.u32("table OID")?,
        column_attr: c.i16("column attribute")?,
        type_oid: c.u32("type OID")?,
        type_size: c.i16("type size")?,
        type_modifier: c.i32("type modifier")?,
        format: c.i16("format code")?,
    })
}

fn put_field_description(out: &mut Vec<u8>, f: &FieldDescription<'_>) {
    put_cstr(out, f.name);
    put_u32(out, f.table_oid);
    put_i16(out, f.column_attr);
    put_u32(out, f.type_oid);
    put_i16(out, f.type_size);
    put_i32(out, f.type_modifier);
    put_i16(out, f.format);
}

/// Iterator over a validated RowDescription.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    c: Cursor<'a>,
    left: u16,
}

impl<'a> Iterator for Fields<'a> {
    type Item = FieldDescription<'a>;

    fn next(&mut self) -> Option<FieldDescription<'a>> {
        self.left = self.left.checked_sub(1)?;
        let f = field_description(&mut self.c).ok();
        if f.is_none() {
            self.left = 0;
        }
        f
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for Fields<'_> {}

/// DataRow ('D').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRow<'a> {
    values: &'a [u8],
    count: u16,
}

impl<'a> DataRow<'a> {
    /// Column values; `None` is NULL.
    pub fn columns(&self) -> Values<'a> {
        Values::new(self.values, self.count)
    }

    pub fn column_count(&self) -> usize {
        usize::from(self.count)
    }
}

/// CommandComplete ('C').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandComplete<'a> {
    /// The command tag, e.g. `INSERT 0 5`, `SELECT 3`, `BEGIN`.
    pub tag: &'a [u8],
}

impl<'a> CommandComplete<'a> {
    /// The first word (`INSERT`, `SELECT`, `SET`, `DISCARD`, ...).
    pub fn command(&self) -> &'a [u8] {
        self.tag.split(|&b| b == b' ').next().unwrap_or_default()
    }

    /// The row count, for tags that end in one (`SELECT 3`, `INSERT 0 5`, `COPY 2`).
    pub fn rows(&self) -> Option<u64> {
        let last = self.tag.rsplit(|&b| b == b' ').next()?;
        if last.len() == self.tag.len() {
            return None;
        }
        super::utf8(last)?.parse().ok()
    }
}

/// NotificationResponse ('A').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationResponse<'a> {
    pub pid: u32,
    pub channel: &'a [u8],
    pub payload: &'a [u8],
}

/// CopyInResponse ('G'), CopyOutResponse ('H') and CopyBothResponse ('W').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyResponse<'a> {
    /// Overall format: 0 text, 1 binary.
    pub format: u8,
    column_formats: &'a [u8],
}

impl<'a> CopyResponse<'a> {
    pub fn column_formats(&self) -> I16s<'a> {
        I16s::new(self.column_formats)
    }

    fn encode(&self, out: &mut Vec<u8>, tag: u8) {
        write_message(out, tag, |b| {
            b.push(self.format);
            put_counted(b, self.column_formats, 2);
        });
    }
}

/// FunctionCallResponse ('V').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionCallResponse<'a> {
    /// `None` is NULL.
    pub result: Option<&'a [u8]>,
}

/// NegotiateProtocolVersion ('v').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateProtocolVersion<'a> {
    /// Newest minor version the server supports for the requested major version.
    pub newest_minor: u32,
    options: &'a [u8],
    count: u32,
}

impl<'a> NegotiateProtocolVersion<'a> {
    /// Protocol options (`_pq_.*`) the server did not recognise.
    pub fn unrecognized_options(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        CStrs::new(self.options)
    }

    pub fn option_count(&self) -> usize {
        self.count as usize
    }
}

/// Any server → client message after the startup packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    Authentication(Authentication<'a>),
    BackendKeyData(BackendKeyData<'a>),
    ParameterStatus(ParameterStatus<'a>),
    ReadyForQuery(TransactionStatus),
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    ParameterDescription(ParameterDescription<'a>),
    RowDescription(RowDescription<'a>),
    DataRow(DataRow<'a>),
    CommandComplete(CommandComplete<'a>),
    EmptyQueryResponse,
    PortalSuspended,
    ErrorResponse(ErrorFields<'a>),
    NoticeResponse(ErrorFields<'a>),
    NotificationResponse(NotificationResponse<'a>),
    CopyInResponse(CopyResponse<'a>),
    CopyOutResponse(CopyResponse<'a>),
    CopyBothResponse(CopyResponse<'a>),
    CopyData(CopyData<'a>),
    CopyDone,
    FunctionCallResponse(FunctionCallResponse<'a>),
    NegotiateProtocolVersion(NegotiateProtocolVersion<'a>),
}

impl<'a> BackendMessage<'a> {
    /// Decode and fully validate one body.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        use BackendMessage as M;
        let mut c = Cursor::new(tag, body);
        let msg = match tag {
            tag::AUTHENTICATION => M::Authentication(decode_authentication(&mut c)?),
            tag::BACKEND_KEY_DATA => {
                let pid = c.u32("process ID")?;
                let key = c.rest()?;
                if !CANCEL_KEY_LEN.contains(&key.len()) {
                    return Err(c.invalid("cancel key length", key.len() as i64));
                }
                M::BackendKeyData(BackendKeyData { pid, key })
            }
            tag::PARAMETER_STATUS => M::ParameterStatus(ParameterStatus {
                name: c.cstr("parameter name")?,
                value: c.cstr("parameter value")?,
            }),
            tag::READY_FOR_QUERY => {
                let b = c.u8("transaction status")?;
                let status =
                    TransactionStatus::from_byte(b).ok_or(c.invalid("transaction status", b))?;
                M::ReadyForQuery(status)
            }
            tag::PARSE_COMPLETE => M::ParseComplete,
            tag::BIND_COMPLETE => M::BindComplete,
            tag::CLOSE_COMPLETE => M::CloseComplete,
            tag::NO_DATA => M::NoData,
            tag::PARAMETER_DESCRIPTION => {
                let n = c.count("parameter count")?;
                let types = c.array_region(n, 4, "parameter types")?;
                M::ParameterDescription(ParameterDescription { types })
            }
            tag::ROW_DESCRIPTION => {
                let count = c.count("field count")?;
                let start = c.remaining();
                for _ in 0..count {
                    field_description(&mut c)?;
                }
                M::RowDescription(RowDescription {
                    fields: c.since(start),
                    count,
                })
            }
            tag::DATA_ROW => {
                let count = c.count("column count")?;
                let values = c.values_region(count, "column value")?;
                M::DataRow(DataRow { values, count })
            }
            tag::COMMAND_COMPLETE => M::CommandComplete(CommandComplete {
                tag: c.cstr("command tag")?,
            }),
            tag::EMPTY_QUERY_RESPONSE => M::EmptyQueryResponse,
            tag::PORTAL_SUSPENDED => M::PortalSuspended,
            tag::ERROR_RESPONSE => M::ErrorResponse(ErrorFields::decode(tag, c.rest()?)?),
            tag::NOTICE_RESPONSE => M::NoticeResponse(ErrorFields::decode(tag, c.rest()?)?),
            tag::NOTIFICATION_RESPONSE => M::NotificationResponse(NotificationResponse {
                pid: c.u32("process ID")?,
                channel: c.cstr("channel")?,
                payload: c.cstr("payload")?,
            }),
            tag::COPY_IN_RESPONSE => M::CopyInResponse(decode_copy_response(&mut c)?),
            tag::COPY_OUT_RESPONSE => M::CopyOutResponse(decode_copy_response(&mut c)?),
            tag::COPY_BOTH_RESPONSE => M::CopyBothResponse(decode_copy_response(&mut c)?),
            tag::COPY_DATA => M::CopyData(CopyData { data: c.rest()? }),
            tag::COPY_DONE => M::CopyDone,
            tag::FUNCTION_CALL_RESPONSE => M::FunctionCallResponse(FunctionCallResponse {
                result: c.value("result value")?,
            }),
            tag::NEGOTIATE_PROTOCOL_VERSION => {
                M::NegotiateProtocolVersion(decode_negotiate(&mut c)?)
            }
            _ => return Err(DecodeError::UnknownTag { tag }),
        };
        c.finish()?;
        Ok(msg)
    }

    /// The type byte.
    pub fn tag(&self) -> u8 {
        use BackendMessage as M;
        match self {
            M::Authentication(_) => tag::AUTHENTICATION,
            M::BackendKeyData(_) => tag::BACKEND_KEY_DATA,
            M::ParameterStatus(_) => tag::PARAMETER_STATUS,
            M::ReadyForQuery(_) => tag::READY_FOR_QUERY,
            M::ParseComplete => tag::PARSE_COMPLETE,
            M::BindComplete => tag::BIND_COMPLETE,
            M::CloseComplete => tag::CLOSE_COMPLETE,
            M::NoData => tag::NO_DATA,
            M::ParameterDescription(_) => tag::PARAMETER_DESCRIPTION,
            M::RowDescription(_) => tag::ROW_DESCRIPTION,
            M::DataRow(_) => tag::DATA_ROW,
            M::CommandComplete(_) => tag::COMMAND_COMPLETE,
            M::EmptyQueryResponse => tag::EMPTY_QUERY_RESPONSE,
            M::PortalSuspended => tag::PORTAL_SUSPENDED,
            M::ErrorResponse(_) => tag::ERROR_RESPONSE,
            M::NoticeResponse(_) => tag::NOTICE_RESPONSE,
            M::NotificationResponse(_) => tag::NOTIFICATION_RESPONSE,
            M::CopyInResponse(_) => tag::COPY_IN_RESPONSE,
            M::CopyOutResponse(_) => tag::COPY_OUT_RESPONSE,
            M::CopyBothResponse(_) => tag::COPY_BOTH_RESPONSE,
            M::CopyData(_) => tag::COPY_DATA,
            M::CopyDone => tag::COPY_DONE,
            M::FunctionCallResponse(_) => tag::FUNCTION_CALL_RESPONSE,
            M::NegotiateProtocolVersion(_) => tag::NEGOTIATE_PROTOCOL_VERSION,
        }
    }

    /// Append the whole message (tag, length, body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use BackendMessage as M;
        let tag = self.tag();
        match self {
            M::Authentication(a) => encode_authentication(a, out),
            M::BackendKeyData(k) => backend_key_data(out, k.pid, k.key),
            M::ParameterStatus(p) => parameter_status(out, p.name, p.value),
            M::ReadyForQuery(s) => ready_for_query(out, *s),
            M::ParameterDescription(p) => {
                write_message(out, tag, |b| put_counted(b, p.types, 4));
            }
            M::RowDescription(r) => write_message(out, tag, |b| {
                put_count(b, usize::from(r.count));
                b.extend_from_slice(r.fields);
            }),
            M::DataRow(r) => write_message(out, tag, |b| {
                put_count(b, usize::from(r.count));
                b.extend_from_slice(r.values);
            }),
            M::CommandComplete(c) => command_complete(out, c.tag),
            M::ErrorResponse(f) | M::NoticeResponse(f) => f.encode(out, tag),
            M::NotificationResponse(n) => notification_response(out, n.pid, n.channel, n.payload),
            M::CopyInResponse(r) | M::CopyOutResponse(r) | M::CopyBothResponse(r) => {
                r.encode(out, tag)
            }
            M::CopyData(d) => d.encode(out),
            M::FunctionCallResponse(r) => function_call_response(out, r.result),
            M::NegotiateProtocolVersion(n) => write_message(out, tag, |b| {
                put_u32(b, n.newest_minor);
                put_u32(b, n.count);
                b.extend_from_slice(n.options);
            }),
            M::ParseComplete
            | M::BindComplete
            | M::CloseComplete
            | M::NoData
            | M::EmptyQueryResponse
            | M::PortalSuspended
            | M::CopyDone => write_message(out, tag, |_| {}),
        }
    }
}

fn decode_copy_response<'a>(c: &mut Cursor<'a>) -> Result<CopyResponse<'a>, DecodeError> {
    let format = c.u8("copy format")?;
    let n = c.count("column count")?;
    let column_formats = c.array_region(n, 2, "column formats")?;
    Ok(CopyResponse {
        format,
        column_formats,
    })
}

fn decode_negotiate<'a>(c: &mut Cursor<'a>) -> Result<NegotiateProtocolVersion<'a>, DecodeError> {
    let newest_minor = c.u32("newest minor version")?;
    let count = c.u32("option count")?;
    let start = c.remaining();
    for _ in 0..count {
        c.cstr("option name")?;
    }
    Ok(NegotiateProtocolVersion {
        newest_minor,
        options: c.since(start),
        count,
    })
}

// ---- builders for what the proxy itself sends ----------------------------------------------

/// BackendKeyData; `key` must be 4 bytes for protocol 3.0 clients, at most 256 for 3.2.
pub fn backend_key_data(out: &mut Vec<u8>, pid: u32, key: &[u8]) {
    debug_assert!(CANCEL_KEY_LEN.contains(&key.len()));
    write_message(out, tag::BACKEND_KEY_DATA, |b| {
        put_u32(b, pid);
        b.extend_from_slice(key);
    });
}

pub fn parameter_status(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    write_message(out, tag::PARAMETER_STATUS, |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn ready_for_query(out: &mut Vec<u8>, status: TransactionStatus) {
    write_message(out, tag::READY_FOR_QUERY, |b| b.push(status.as_byte()));
}

pub fn parse_complete(out: &mut Vec<u8>) {
    write_message(out, tag::PARSE_COMPLETE, |_| {});
}

pub fn bind_complete(out: &mut Vec<u8>) {
    write_message(out, tag::BIND_COMPLETE, |_| {});
}

pub fn close_complete(out: &mut Vec<u8>) {
    write_message(out, tag::CLOSE_COMPLETE, |_| {});
}

pub fn no_data(out: &mut Vec<u8>) {
    write_message(out, tag::NO_DATA, |_| {});
}

pub fn empty_query_response(out: &mut Vec<u8>) {
    write_message(out, tag::EMPTY_QUERY_RESPONSE, |_| {});
}

pub fn command_complete(out: &mut Vec<u8>, command_tag: &[u8]) {
    write_message(out, tag::COMMAND_COMPLETE, |b| put_cstr(b, command_tag));
}

/// ParameterDescription: the type OID of each parameter of a statement.
pub fn parameter_description(out: &mut Vec<u8>, types: &[u32]) {
    write_message(out, tag::PARAMETER_DESCRIPTION, |b| {
        put_count(b, types.len());
        types.iter().for_each(|&t| put_u32(b, t));
    });
}

/// RowDescription: one entry per result column.
pub fn row_description(out: &mut Vec<u8>, fields: &[FieldDescription<'_>]) {
    write_message(out, tag::ROW_DESCRIPTION, |b| {
        put_count(b, fields.len());
        fields.iter().for_each(|f| put_field_description(b, f));
    });
}

/// DataRow: the column values of one row; `None` is NULL.
pub fn data_row<'v>(out: &mut Vec<u8>, columns: impl IntoIterator<Item = Option<&'v [u8]>>) {
    write_message(out, tag::DATA_ROW, |b| put_values(b, columns));
}

pub fn portal_suspended(out: &mut Vec<u8>) {
    write_message(out, tag::PORTAL_SUSPENDED, |_| {});
}

/// NotificationResponse: a NOTIFY on `channel` from backend process `pid`.
pub fn notification_response(out: &mut Vec<u8>, pid: u32, channel: &[u8], payload: &[u8]) {
    write_message(out, tag::NOTIFICATION_RESPONSE, |b| {
        put_u32(b, pid);
        put_cstr(b, channel);
        put_cstr(b, payload);
    });
}

/// CopyInResponse: `format` 0 (text) or 1 (binary) overall, then one format code per column.
pub fn copy_in_response(out: &mut Vec<u8>, format: u8, column_formats: &[i16]) {
    copy_response(out, tag::COPY_IN_RESPONSE, format, column_formats);
}

/// CopyOutResponse; arguments as for [`copy_in_response`].
pub fn copy_out_response(out: &mut Vec<u8>, format: u8, column_formats: &[i16]) {
    copy_response(out, tag::COPY_OUT_RESPONSE, format, column_formats);
}

/// CopyBothResponse (replication); arguments as for [`copy_in_response`].
pub fn copy_both_response(out: &mut Vec<u8>, format: u8, column_formats: &[i16]) {
    copy_response(out, tag::COPY_BOTH_RESPONSE, format, column_formats);
}

fn copy_response(out: &mut Vec<u8>, tag: u8, format: u8, column_formats: &[i16]) {
    write_message(out, tag, |b| {
        b.push(format);
        put_count(b, column_formats.len());
        column_formats.iter().for_each(|&f| put_i16(b, f));
    });
}

/// FunctionCallResponse: the function's result; `None` is NULL.
pub fn function_call_response(out: &mut Vec<u8>, result: Option<&[u8]>) {
    write_message(out, tag::FUNCTION_CALL_RESPONSE, |b| put_value(b, result));
}

/// NegotiateProtocolVersion: the newest minor we speak and the `_pq_.*` options we ignored.
pub fn negotiate_protocol_version(out: &mut Vec<u8>, newest_minor: u32, unrecognized: &[&[u8]]) {
    write_message(out, tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
        put_u32(b, newest_minor);
        put_u32(b, u32::try_from(unrecognized.len()).unwrap_or(u32::MAX));
        unrecognized.iter().for_each(|o| put_cstr(b, o));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Severity, SqlState, error_response, write::put_i32};

    const FIELD_ID: FieldDescription<'static> = FieldDescription {
        name: b"id",
        table_oid: 16384,
        column_attr: 1,
        type_oid: 23,
        type_size: 4,
        type_modifier: -1,
        format: 0,
    };
    const FIELD_NAME: FieldDescription<'static> = FieldDescription {
        name: b"name",
        table_oid: 16384,
        column_attr: 2,
        type_oid: 25,
        type_size: -1,
        type_modifier: -1,
        format: 1,
    };

    fn roundtrip(bytes: &[u8]) -> BackendMessage<'_> {
        let msg = BackendMessage::decode(bytes[0], &bytes[5..]).unwrap();
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out, bytes);
        assert_eq!(msg.tag(), bytes[0]);
        msg
    }

    #[test]
    fn builders_round_trip() {
        let builders: &[fn(&mut Vec<u8>)] = &[
            authentication_ok,
            authentication_cleartext,
            |o| authentication_md5(o, *b"salt"),
            |o| authentication_sasl(o, &[b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]),
            |o| sasl_continue(o, b"r=abc,s=xyz,i=4096"),
            |o| sasl_final(o, b"v=abc"),
            |o| backend_key_data(o, 42, &[1, 2, 3, 4]),
            |o| backend_key_data(o, 42, &[7; 32]),
            |o| parameter_status(o, b"TimeZone", b"UTC"),
            |o| ready_for_query(o, TransactionStatus::Failed),
            parse_complete,
            bind_complete,
            close_complete,
            no_data,
            empty_query_response,
            |o| command_complete(o, b"SELECT 1"),
            |o| parameter_description(o, &[]),
            |o| parameter_description(o, &[23, 25]),
            |o| row_description(o, &[]),
            |o| row_description(o, &[FIELD_ID, FIELD_NAME]),
            |o| data_row(o, []),
            |o| data_row(o, [Some(&b"a"[..]), None, Some(b"")]),
            portal_suspended,
            |o| notification_response(o, 7, b"jobs", b"42"),
            |o| notification_response(o, 7, b"jobs", b""),
            |o| copy_in_response(o, 0, &[]),
            |o| copy_in_response(o, 1, &[1, 1]),
            |o| copy_out_response(o, 0, &[0, 0, 0]),
            |o| copy_both_response(o, 1, &[]),
            |o| function_call_response(o, Some(b"\0\0\0\x01")),
            |o| function_call_response(o, None),
            |o| negotiate_protocol_version(o, 0, &[b"_pq_.foo"]),
            |o| error_response(o, Severity::Error, SqlState::QUERY_CANCELED, "x"),
            |o| copy_data(o, b"row"),
            copy_done,
        ];
        for build in builders {
            let mut out = Vec::new();
            build(&mut out);
            roundtrip(&out);
        }
    }

    #[test]
    fn authentication_views() {
        let mut out = Vec::new();
        authentication_sasl(&mut out, &[b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]);
        let BackendMessage::Authentication(Authentication::Sasl(m)) = roundtrip(&out) else {
            panic!()
        };
        assert!(m.contains(b"SCRAM-SHA-256") && !m.contains(b"SCRAM"));
        assert_eq!(m.iter().count(), 2);
        let mut out = Vec::new();
        authentication_md5(&mut out, [1, 2, 3, 4]);
        assert_eq!(
            roundtrip(&out),
            BackendMessage::Authentication(Authentication::Md5Password { salt: [1, 2, 3, 4] })
        );
        for code in [2u8, 7, 9] {
            let bytes = [b'R', 0, 0, 0, 8, 0, 0, 0, code];
            roundtrip(&bytes);
        }
        roundtrip(b"R\0\0\0\x0a\0\0\0\x08ab");
    }

    #[test]
    fn row_description_and_data_row() {
        let mut out = Vec::new();
        write_message(&mut out, b'T', |b| {
            put_count(b, 2);
            for (name, ty) in [(&b"id"[..], 23u32), (b"name", 25)] {
                put_cstr(b, name);
                put_u32(b, 16384);
                b.extend_from_slice(&1i16.to_be_bytes());
                put_u32(b, ty);
                b.extend_from_slice(&(-1i16).to_be_bytes());
                put_i32(b, -1);
                b.extend_from_slice(&0i16.to_be_bytes());
            }
        });
        let BackendMessage::RowDescription(r) = roundtrip(&out) else {
            panic!()
        };
        let fields: Vec<_> = r.fields().collect();
        assert_eq!(fields.len(), r.field_count());
        assert_eq!((fields[1].name, fields[1].type_oid), (&b"name"[..], 25));
        assert_eq!(fields[0].type_modifier, -1);

        let row = b"D\0\0\0\x13\0\x03\0\0\0\x01a\xff\xff\xff\xff\0\0\0\0";
        let BackendMessage::DataRow(d) = roundtrip(row) else {
            panic!()
        };
        assert_eq!(
            d.columns().collect::<Vec<_>>(),
            vec![Some(&b"a"[..]), None, Some(&b""[..])]
        );
    }

    #[test]
    fn builder_views() {
        let mut out = Vec::new();
        row_description(&mut out, &[FIELD_ID, FIELD_NAME]);
        let BackendMessage::RowDescription(r) = roundtrip(&out) else {
            panic!()
        };
        assert_eq!(r.fields().collect::<Vec<_>>(), vec![FIELD_ID, FIELD_NAME]);
        let mut out = Vec::new();
        parameter_description(&mut out, &[23, 25]);
        let BackendMessage::ParameterDescription(p) = roundtrip(&out) else {
            panic!()
        };
        assert_eq!(p.types().collect::<Vec<_>>(), vec![23, 25]);
        let mut out = Vec::new();
        copy_out_response(&mut out, 1, &[1, 0]);
        assert_eq!(out, b"H\0\0\0\x0b\x01\0\x02\0\x01\0\0");
        let BackendMessage::CopyOutResponse(c) = roundtrip(&out) else {
            panic!()
        };
        assert_eq!(
            (c.format, c.column_formats().collect::<Vec<_>>()),
            (1, vec![1, 0])
        );
        let mut out = Vec::new();
        notification_response(&mut out, 9, b"ch", b"hi");
        assert_eq!(
            roundtrip(&out),
            BackendMessage::NotificationResponse(NotificationResponse {
                pid: 9,
                channel: b"ch",
                payload: b"hi"
            })
        );
        let mut out = Vec::new();
        function_call_response(&mut out, None);
        assert_eq!(out, b"V\0\0\0\x08\xff\xff\xff\xff");
    }

    #[test]
    fn portal_suspended_decodes() {
        // As PostgreSQL sends it after `Execute` with a row limit that the portal outran.
        let bytes = b"s\0\0\0\x04";
        assert_eq!(roundtrip(bytes), BackendMessage::PortalSuspended);
        let mut out = Vec::new();
        portal_suspended(&mut out);
        assert_eq!(out, bytes);
        assert_eq!(
            BackendMessage::decode(b's', b"x").unwrap_err(),
            DecodeError::TrailingBytes {
                tag: b's',
                extra: 1
            }
        );
    }

    #[test]
    fn command_complete_rows() {
        let cc = |t: &'static [u8]| CommandComplete { tag: t };
        assert_eq!(cc(b"INSERT 0 5").rows(), Some(5));
        assert_eq!(cc(b"SELECT 3").rows(), Some(3));
        assert_eq!(cc(b"BEGIN").rows(), None);
        assert_eq!(cc(b"INSERT 0 5").command(), b"INSERT");
        assert_eq!(cc(b"").command(), b"");
    }

    #[test]
    fn negotiate_protocol_version_view() {
        let mut out = Vec::new();
        negotiate_protocol_version(&mut out, 2, &[b"_pq_.a", b"_pq_.b"]);
        let BackendMessage::NegotiateProtocolVersion(n) = roundtrip(&out) else {
            panic!()
        };
        assert_eq!((n.newest_minor, n.option_count()), (2, 2));
        assert_eq!(
            n.unrecognized_options().collect::<Vec<_>>(),
            vec![&b"_pq_.a"[..], b"_pq_.b"]
        );
    }

    #[test]
    fn rejects_malformed_bodies() {
        use DecodeError::*;
        let err = |tag: u8, body: &[u8]| BackendMessage::decode(tag, body).unwrap_err();
        assert!(matches!(err(b'Z', b"X"), InvalidValue { value: 88, .. }));
        assert_eq!(
            err(b'Z', b"II"),
            TrailingBytes {
                tag: b'Z',
                extra: 1
            }
        );
        assert!(matches!(err(b'Z', b""), UnexpectedEof { .. }));
        assert_eq!(err(b'x', b""), UnknownTag { tag: b'x' });
        assert!(matches!(
            err(b'R', b"\0\0\0\x06"),
            InvalidValue { value: 6, .. }
        ));
        assert_eq!(
            err(b'R', b"\0\0\0\0\0"),
            TrailingBytes {
                tag: b'R',
                extra: 1
            }
        );
        assert!(matches!(err(b'R', b"\0\0\0\x05abc"), UnexpectedEof { .. }));
        // SASL mechanism list without its final extra NUL.
        assert!(matches!(
            err(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0"),
            UnexpectedEof { .. } | MissingNul { .. }
        ));
        // Cancel keys outside 4..=256.
        assert!(matches!(
            err(b'K', b"\0\0\0\x01abc"),
            InvalidValue { value: 3, .. }
        ));
        assert!(matches!(
            err(b'K', &[0; 4 + 257]),
            InvalidValue { value: 257, .. }
        ));
        // DataRow: negative length other than -1, too few columns, too many bytes.
        assert!(matches!(
            err(b'D', b"\0\x01\xff\xff\xff\xfe"),
            InvalidValue { value: -2, .. }
        ));
        assert!(matches!(
            err(b'D', b"\0\x02\xff\xff\xff\xff"),
            UnexpectedEof { .. }
        ));
        assert_eq!(
            err(b'D', b"\0\x01\xff\xff\xff\xff\0"),
            TrailingBytes {
                tag: b'D',
                extra: 1
            }
        );
        // RowDescription field truncated.
        assert!(matches!(err(b'T', b"\0\x01id\0\0\0"), UnexpectedEof { .. }));
        // ParameterDescription count larger than the data.
        assert!(matches!(
            err(b't', b"\0\x02\0\0\0\x17"),
            UnexpectedEof { .. }
        ));
        // CopyResponse column formats missing.
        assert!(matches!(err(b'G', b"\0\0\x01"), UnexpectedEof { .. }));
        // FunctionCallResponse with a bad length.
        assert!(matches!(err(b'V', b"\x80\0\0\0"), InvalidValue { .. }));
        // NegotiateProtocolVersion option count larger than the list.
        assert!(matches!(
            err(b'v', b"\0\0\0\0\0\0\0\x02_pq_.a\0"),
            MissingNul { .. }
        ));
        // ErrorResponse without terminator.
        assert!(matches!(err(b'E', b"SERROR\0"), UnexpectedEof { .. }));
        // ParameterStatus value without NUL.
        assert!(matches!(err(b'S', b"a\0b"), MissingNul { .. }));
    }
}
