//! What can go wrong in the browser client, phrased for the person at the page.

use protocol::rendezvous::RendezvousError;
use protocol::transfer::TransferError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The link or code could not be used.
    #[error("cannot use that link or code: {0}")]
    Invitation(#[from] protocol::invite::InviteError),
    /// The rendezvous failed: server, secret, the other peer, or no path.
    #[error("{0}")]
    Rendezvous(#[from] RendezvousError),
    /// The browser's WebRTC stack refused something.
    #[error("{0}")]
    Connect(String),
    /// The transfer protocol ended with an error (peer cancelled, hash mismatch, …).
    #[error("{0}")]
    Transfer(#[from] TransferError),
    /// The data channel closed before the transfer finished.
    #[error("the other peer vanished: the connection closed before the transfer finished")]
    Vanished,
    /// Nothing could be sent for [`protocol::transfer::SEND_STALL`].
    #[error("the connection stalled: nothing could be sent for {} s", protocol::transfer::SEND_STALL.as_secs())]
    Stalled,
    /// Reading a file to send failed.
    #[error("cannot read {0}: the file changed or is no longer readable")]
    Read(String),
    /// Saving a received file failed.
    #[error("cannot save a received file: {0}")]
    Write(String),
    /// This side stopped.
    #[error("stopped: the transfer was cancelled and the other side told")]
    Cancelled,
    /// The browser lacks something punchdrop needs.
    #[error("this browser cannot run punchdrop: {0}")]
    Unsupported(String),
    /// The page called the client in a way that makes no sense (a bug in the page).
    #[error("{0}")]
    Usage(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The connection went away under a transfer that did not itself fail.
    pub fn is_link_lost(&self) -> bool {
        matches!(
            self,
            Self::Vanished | Self::Stalled | Self::Transfer(TransferError::Stalled)
        )
    }
}

impl From<Error> for wasm_bindgen::JsValue {
    fn from(e: Error) -> Self {
        js_sys::Error::new(&e.to_string()).into()
    }
}
