//! Connection ids: a slab index plus the generation of the slot's current occupant.
//!
//! A slab slot is reused as soon as a connection closes, possibly while events, timers or
//! messages naming the old connection are still on their way. Every record stores its
//! generation, and every lookup by id compares it, so a stale id finds nothing instead of
//! the slot's new occupant.

/// Generations wrap at 2^30 (the reactor packs kind, index and generation into a mio
/// token); a stale id is at most a few loop turns old, so the wrap is harmless.
pub const GENERATION_BITS: u32 = 30;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

macro_rules! conn_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name {
            index: u32,
            generation: u32,
        }

        impl $name {
            /// The id of slot `index` holding generation `generation` (masked to
            /// [`GENERATION_BITS`]). Slab indexes are bounded by connection limits, far
            /// below 2^32; a larger one saturates and finds nothing.
            pub fn new(index: usize, generation: u32) -> $name {
                $name {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    generation: generation & GENERATION_MASK,
                }
            }

            pub fn index(self) -> usize {
                self.index as usize
            }

            pub fn generation(self) -> u32 {
                self.generation
            }
        }
    };
}

conn_id! {
    /// A client connection of one engine.
    ClientId
}

conn_id! {
    /// A server connection of one engine.
    ServerId
}

/// Hands out generations for slab slots.
#[derive(Debug, Default)]
pub struct Generations(u32);

impl Generations {
    pub fn bump(&mut self) -> u32 {
        self.0 = (self.0 + 1) & GENERATION_MASK;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_mask_and_differ() {
        let mut g = Generations::default();
        let (a, b) = (g.bump(), g.bump());
        assert_ne!(ClientId::new(3, a), ClientId::new(3, b));
        assert_eq!(ServerId::new(1, u32::MAX).generation(), GENERATION_MASK);
        assert_eq!(ServerId::new(usize::MAX, 1).index(), u32::MAX as usize);
    }
}
