//! The SCRAM error type, shared by the server and the client side.

use std::fmt;

/// How the proxy reports a failed authentication to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailureKind {
    /// Wrong password, unknown user, failed channel binding: SQLSTATE 28P01, with the same
    /// message whatever the cause so nobody learns which users exist.
    InvalidCredentials,
    /// The peer broke the SCRAM syntax or ordering: SQLSTATE 08P01.
    ProtocolViolation,
}

/// Everything that can go wrong in a SCRAM exchange, on either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// The client-first-message is not valid SCRAM; `what` names the part.
    MalformedClientFirst { what: &'static str },
    /// The client-final-message is not valid SCRAM; `what` names the part.
    MalformedClientFinal { what: &'static str },
    /// A server-first or server-final message is not valid SCRAM or is out of bounds.
    InvalidServerResponse { what: &'static str },
    /// The peer selected a mechanism that was not offered, or offered none we support.
    UnsupportedMechanism,
    /// `p=<type>` with a channel binding type other than `tls-server-end-point`.
    UnsupportedChannelBindingType,
    /// The client selected `SCRAM-SHA-256-PLUS` but its gs2 header has no `p=`.
    ChannelBindingNotSent,
    /// The client sent `p=` with plain `SCRAM-SHA-256`.
    UnexpectedChannelBinding,
    /// The client said `y` (supports channel binding, thinks we do not) while we offered PLUS:
    /// the mechanism list was tampered with.
    ChannelBindingDowngrade,
    /// The `c=` attribute does not match the gs2 header and this connection's binding data.
    ChannelBindingMismatch,
    /// Channel binding is required but the server does not offer PLUS or the connection has no
    /// binding data.
    ChannelBindingRequired,
    /// The client asked for an authorization identity (`a=`); not supported.
    AuthzidUnsupported,
    /// The peer requires a SCRAM extension (`m=`); none is supported.
    ExtensionUnsupported,
    /// The nonce does not continue the exchange (client-final nonce differs from the combined
    /// nonce, or the server nonce does not start with ours).
    NonceMismatch,
    /// The client proof is wrong: wrong password or unknown user.
    InvalidProof,
    /// The server's signature is wrong: it does not know the password (or is an impostor).
    ServerSignatureMismatch,
    /// The server ended the exchange with `e=<value>` (sanitized).
    ServerError(String),
    /// A message arrived in a state that does not expect it (including after a failure).
    OutOfOrder,
}

impl ScramError {
    /// How the proxy should report this error (SQLSTATE 28P01 or 08P01).
    #[must_use]
    pub fn kind(&self) -> AuthFailureKind {
        match self {
            Self::InvalidProof
            | Self::ChannelBindingMismatch
            | Self::ChannelBindingDowngrade
            | Self::ChannelBindingRequired
            | Self::ServerSignatureMismatch
            | Self::ServerError(_) => AuthFailureKind::InvalidCredentials,
            Self::MalformedClientFirst { .. }
            | Self::MalformedClientFinal { .. }
            | Self::InvalidServerResponse { .. }
            | Self::UnsupportedMechanism
            | Self::UnsupportedChannelBindingType
            | Self::ChannelBindingNotSent
            | Self::UnexpectedChannelBinding
            | Self::AuthzidUnsupported
            | Self::ExtensionUnsupported
            | Self::NonceMismatch
            | Self::OutOfOrder => AuthFailureKind::ProtocolViolation,
        }
    }
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MalformedClientFirst { what } => {
                write!(f, "malformed SCRAM client-first-message: {what}")
            }
            Self::MalformedClientFinal { what } => {
                write!(f, "malformed SCRAM client-final-message: {what}")
            }
            Self::InvalidServerResponse { what } => write!(f, "invalid SCRAM response: {what}"),
            Self::UnsupportedMechanism => f.write_str("unsupported SASL mechanism"),
            Self::UnsupportedChannelBindingType => {
                f.write_str("unsupported SCRAM channel-binding type")
            }
            Self::ChannelBindingNotSent => f.write_str(
                "client selected SCRAM-SHA-256-PLUS but sent no channel binding in the gs2 header",
            ),
            Self::UnexpectedChannelBinding => f.write_str(
                "client selected SCRAM-SHA-256 without channel binding but sent channel binding",
            ),
            Self::ChannelBindingDowngrade => f.write_str(
                "SCRAM channel binding negotiation error: client thinks the server does not \
                 support channel binding, but it does",
            ),
            Self::ChannelBindingMismatch => f.write_str("SCRAM channel binding check failed"),
            Self::ChannelBindingRequired => f.write_str(
                "channel binding is required, but the server did not offer SCRAM-SHA-256-PLUS \
                 or the connection has no channel binding data",
            ),
            Self::AuthzidUnsupported => f.write_str("SCRAM authorization identity not supported"),
            Self::ExtensionUnsupported => f.write_str("unsupported mandatory SCRAM extension"),
            Self::NonceMismatch => f.write_str("SCRAM nonce mismatch"),
            Self::InvalidProof => f.write_str("invalid SCRAM client proof"),
            Self::ServerSignatureMismatch => f.write_str("invalid SCRAM server signature"),
            Self::ServerError(e) => write!(f, "error received from server in SCRAM exchange: {e}"),
            Self::OutOfOrder => f.write_str("SCRAM message out of order"),
        }
    }
}

impl std::error::Error for ScramError {}
