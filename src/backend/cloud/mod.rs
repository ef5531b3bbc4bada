//! Cloud tier (HTTP providers).
