//! Relay messages.
