//! PostgreSQL wire protocol codec (sans-IO).
