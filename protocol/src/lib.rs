//! What both punchdrop peers and the signalling server share, with no I/O.
//!
//! - [`signal`]: the WebSocket messages between a peer and the server, and the sealed
//!   peer-to-peer signalling carried inside them.
//! - [`crypto`]: SPAKE2 over the share secret, the key schedule and the AEAD that seals every
//!   signalling payload end to end, so the server only relays opaque bytes.
//! - [`invite`]: share links (`http(s)://HOST/r/ROOM#SECRET`) and typed codes
//!   (`NNN-word-word-word`).
//! - [`transfer`]: the file-transfer protocol as sans-IO state machines (sender and receiver),
//!   plus file-name sanitising.
//!
//! Invariant: nothing here opens a socket, a file or reads a clock. Callers pass time in as a
//! [`Duration`](core::time::Duration) since an epoch of their choosing, which is what lets the
//! tests run both ends on virtual time. The crate builds for `wasm32-unknown-unknown`.

pub mod crypto;
pub mod invite;
pub mod signal;
pub mod transfer;
mod words;

pub use transfer::names;
