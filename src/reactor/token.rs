//! mio tokens: connection kind + slab index + generation.
//!
//! A slab slot is reused as soon as a connection closes, possibly while events for the old
//! connection are still in the current `Events` batch. The generation in the token (also
//! stored in the slot) lets the reactor ignore such stale events.

use mio::Token;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Listener,
    Client,
    Backend,
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
const GEN_BITS: u32 = 30;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;

impl Tok {
    pub const WAKER: Tok = Tok {
        kind: Kind::Waker,
        index: 0,
        generation: 0,
    };

    pub fn new(kind: Kind, index: usize, generation: u32) -> Tok {
        Tok {
            kind,
            // Slab indexes are bounded by max_client_connections and pool sizes, far below 2^32.
            index: u32::try_from(index).unwrap_or(u32::MAX),
            generation: generation & GEN_MASK as u32,
        }
    }

    pub fn index(self) -> usize {
        self.index as usize
    }

    pub fn to_token(self) -> Token {
        let kind = match self.kind {
            Kind::Listener => 0u64,
            Kind::Client => 1,
            Kind::Backend => 2,
            Kind::Waker => 3,
        };
        let raw = (u64::from(self.index) << (KIND_BITS + GEN_BITS))
            | ((u64::from(self.generation) & GEN_MASK) << KIND_BITS)
            | kind;
        Token(raw as usize)
    }

    pub fn from_token(token: Token) -> Tok {
        let raw = token.0 as u64;
        let kind = match raw & 0b11 {
            0 => Kind::Listener,
            1 => Kind::Client,
            2 => Kind::Backend,
            _ => Kind::Waker,
        };
        Tok {
            kind,
            index: (raw >> (KIND_BITS + GEN_BITS)) as u32,
            generation: ((raw >> KIND_BITS) & GEN_MASK) as u32,
        }
    }
}

/// Hands out generations for slab slots; wraps at 2^30, which is harmless because a stale
/// event can only be one `poll` old.
#[derive(Debug, Default)]
pub struct Generations(u32);

impl Generations {
    pub fn bump(&mut self) -> u32 {
        self.0 = (self.0 + 1) & GEN_MASK as u32;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for kind in [Kind::Listener, Kind::Client, Kind::Backend, Kind::Waker] {
            for (index, generation) in [
                (0, 0),
                (1, 7),
                (123_456, (1 << 30) - 1),
                (u32::MAX as usize, 5),
            ] {
                let tok = Tok::new(kind, index, generation);
                assert_eq!(Tok::from_token(tok.to_token()), tok);
            }
        }
    }

    #[test]
    fn generations_differ_between_uses() {
        let mut g = Generations::default();
        let a = g.bump();
        let b = g.bump();
        assert_ne!(
            Tok::new(Kind::Client, 3, a).to_token(),
            Tok::new(Kind::Client, 3, b).to_token()
        );
    }
}
