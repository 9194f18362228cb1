//! Authentication primitives (sans-IO).
