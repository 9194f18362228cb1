//! mio tokens: connection kind + slab index + generation.
//!
//! The engine's ids carry the generation of a slot's occupant; the token does too, so an
//! event for a connection that closed (its slot possibly reused within the same `Events`
//! batch) is recognised as stale and ignored.

use mio::Token;

use crate::engine::id::GENERATION_BITS;
use crate::engine::{ClientId, Conn, ServerId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Listener,
    Client,
    Server,
    Waker,
}

/// A decoded token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tok {
    pub kind: Kind,
    pub index: u32,
    pub generation: u32,
}

const KIND_BITS: u32 = 2;
const GEN_MASK: u64 = (1 << GENERATION_BITS) - 1;

impl Tok {
    pub const WAKER: Tok = Tok {
        kind: Kind::Waker,
        index: 0,
        generation: 0,
    };

    pub fn listener(index: usize) -> Tok {
        Tok {
            kind: Kind::Listener,
            index: u32::try_from(index).unwrap_or(u32::MAX),
            generation: 0,
        }
    }

    pub fn conn(conn: Conn) -> Tok {
        let (kind, index, generation) = match conn {
            Conn::Client(c) => (Kind::Client, c.index(), c.generation()),
            Conn::Server(s) => (Kind::Server, s.index(), s.generation()),
        };
        Tok {
            kind,
            index: u32::try_from(index).unwrap_or(u32::MAX),
            generation,
        }
    }

    /// The connection this token names, if it names one.
    pub fn as_conn(self) -> Option<Conn> {
        let index = self.index as usize;
        match self.kind {
            Kind::Client => Some(Conn::Client(ClientId::new(index, self.generation))),
            Kind::Server => Some(Conn::Server(ServerId::new(index, self.generation))),
            Kind::Listener | Kind::Waker => None,
        }
    }

    pub fn to_token(self) -> Token {
        let kind = match self.kind {
            Kind::Listener => 0u64,
            Kind::Client => 1,
            Kind::Server => 2,
            Kind::Waker => 3,
        };
        let raw = (u64::from(self.index) << (KIND_BITS + GENERATION_BITS))
            | ((u64::from(self.generation) & GEN_MASK) << KIND_BITS)
            | kind;
        Token(raw as usize)
    }

    pub fn from_token(token: Token) -> Tok {
        let raw = token.0 as u64;
        let kind = match raw & 0b11 {
            0 => Kind::Listener,
            1 => Kind::Client,
            2 => Kind::Server,
            _ => Kind::Waker,
        };
        Tok {
            kind,
            index: (raw >> (KIND_BITS + GENERATION_BITS)) as u32,
            generation: ((raw >> KIND_BITS) & GEN_MASK) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for kind in [Kind::Listener, Kind::Client, Kind::Server, Kind::Waker] {
            for (index, generation) in [(0, 0), (1, 7), (123_456, (1 << 30) - 1), (u32::MAX, 5)] {
                let tok = Tok {
                    kind,
                    index,
                    generation,
                };
                assert_eq!(Tok::from_token(tok.to_token()), tok);
            }
        }
    }

    #[test]
    fn connection_tokens_name_their_connection() {
        let conn = Conn::Server(ServerId::new(9, 3));
        assert_eq!(Tok::conn(conn).as_conn(), Some(conn));
        assert_ne!(
            Tok::conn(Conn::Client(ClientId::new(3, 1))).to_token(),
            Tok::conn(Conn::Client(ClientId::new(3, 2))).to_token()
        );
        assert_eq!(Tok::listener(2).as_conn(), None);
    }
}
