//! Configuration model, validation and secrets.
