//! What both punchdrop peers and the signalling server share, with no I/O.
//!
//! - [`signal`]: the WebSocket messages between a peer and the server, and the sealed
//!   peer-to-peer signalling carried inside them.
//! - [`crypto`]: SPAKE2 over the share secret, the key schedule and the AEAD that seals every
//!   signalling payload end to end, so the server only relays opaque bytes.
//! - [`invite`]: share links (`http(s)://HOST/r/ROOM#SECRET`) and typed codes
//!   (`NNN-word-word-word`).
//! - [`rendezvous`]: create or join a room, the PAKE, hellos and roles, offer/answer and
//!   candidates, every deadline, as one sans-IO machine both clients drive.
//! - [`transfer`]: the file-transfer protocol as sans-IO state machines (sender and receiver),
//!   plus file-name sanitising.
//! - [`relay`]: a volunteer relay offering its TURN to a server's relay pool.
//! - [`event`]: what a person or a program sees (`--json`, the page's events), and [`path`]:
//!   how the peers are connected, decided once for both clients.
//!
//! Invariant: nothing here opens a socket, a file or reads a clock. Callers pass time in as a
//! [`Duration`](core::time::Duration) since an epoch of their choosing, which is what lets the
//! tests run both ends on virtual time. The crate builds for `wasm32-unknown-unknown`.

pub mod crypto;
pub mod device;
pub mod event;
pub mod inbox;
pub mod invite;
pub mod path;
pub mod relay;
pub mod rendezvous;
pub mod signal;
pub mod transfer;
mod words;

pub use transfer::names;
