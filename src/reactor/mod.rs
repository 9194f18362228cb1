//! The reactor layer: mio event loops that own sockets, TLS record I/O, timers and buffers,
//! and drive the sans-IO client/backend state machines.

pub mod buf;
pub mod stream;
pub mod timer;
pub mod token;
