//! Wire format of the data channel.
//!
//! Each data-channel message is one frame; the first byte says which kind:
//! - `0x00` control: the rest is JSON of [`Control`] (small, rare, easy to evolve);
//! - `0x01` data: `u32` file index, `u64` offset (both big-endian), then the payload bytes.
//!
//! No frame exceeds [`MAX_FRAME`] (Chromium's data-channel message limit).

use super::{CancelReason, OfferEntry, Role, TransferError};
use crate::path::PairView;
use serde::{Deserialize, Serialize};

/// Largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 256 * 1024;
/// Bytes before the payload in a data frame.
pub const DATA_HEADER_LEN: usize = 1 + 4 + 8;

const TAG_CONTROL: u8 = 0;
const TAG_DATA: u8 = 1;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    Hello {
        version: u32,
        role: Role,
        seen_peer: bool,
        max_frame: u32,
        /// The pair this side sends on, when it knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PairView>,
    },
    /// The pair this side sends on changed.
    Path {
        path: PairView,
    },
    /// The sender proves its device key for this session (before its offer; an inbox
    /// decides by it, [`crate::device`]).
    Device {
        device: crate::device::DeviceProof,
    },
    Offer {
        total_files: u32,
        total_bytes: u64,
        files: Vec<OfferEntry>,
    },
    /// The receiver takes the offer. `resume` lists the files it already holds a beginning
    /// of (kept from an interrupted transfer), which the sender checks before sending.
    Accept {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        resume: Vec<Held>,
    },
    /// The sender's answer to `accept.resume`, before any data: for each file listed there,
    /// where its data starts (the held length if the beginnings match, else 0: it starts
    /// over).
    Resume {
        files: Vec<ResumeAt>,
    },
    Decline {
        message: String,
    },
    FileEnd {
        index: u32,
        blake3: String,
    },
    FileAck {
        index: u32,
    },
    Complete,
    Cancel {
        reason: CancelReason,
        message: String,
    },
}

impl Control {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Path { .. } => "path",
            Self::Offer { .. } => "offer",
            Self::Accept { .. } => "accept",
            Self::Resume { .. } => "resume",
            Self::Decline { .. } => "decline",
            Self::Device { .. } => "device",
            Self::FileEnd { .. } => "file_end",
            Self::FileAck { .. } => "file_ack",
            Self::Complete => "complete",
            Self::Cancel { .. } => "cancel",
        }
    }
}

/// The beginning of a file a receiver holds: its first `offset` bytes hash to `blake3`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Held {
    pub index: u32,
    pub offset: u64,
    pub blake3: String,
}

/// Where the data of a held file starts: its held `offset` (continued) or 0 (started over).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResumeAt {
    pub index: u32,
    pub offset: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Control(Control),
    Data {
        index: u32,
        offset: u64,
        payload: &'a [u8],
    },
}

pub fn encode_control(c: &Control) -> Vec<u8> {
    let mut out = vec![TAG_CONTROL];
    serde_json::to_writer(&mut out, c).expect("control frames always serialise");
    out
}

/// Fill the first [`DATA_HEADER_LEN`] bytes of `buf` for a data frame.
pub fn write_data_header(buf: &mut [u8], index: u32, offset: u64) {
    buf[0] = TAG_DATA;
    buf[1..5].copy_from_slice(&index.to_be_bytes());
    buf[5..13].copy_from_slice(&offset.to_be_bytes());
}

pub fn decode(buf: &[u8]) -> Result<Frame<'_>, TransferError> {
    if buf.len() > MAX_FRAME {
        return Err(TransferError::Oversized {
            len: buf.len(),
            max: MAX_FRAME,
        });
    }
    match buf.first() {
        None => Err(TransferError::Malformed("empty frame")),
        Some(&TAG_CONTROL) => serde_json::from_slice(&buf[1..])
            .map(Frame::Control)
            .map_err(|_| TransferError::Malformed("unreadable control frame")),
        Some(&TAG_DATA) => {
            if buf.len() <= DATA_HEADER_LEN {
                return Err(TransferError::Malformed("truncated data frame"));
            }
            let index = u32::from_be_bytes(buf[1..5].try_into().expect("4 bytes"));
            let offset = u64::from_be_bytes(buf[5..13].try_into().expect("8 bytes"));
            Ok(Frame::Data {
                index,
                offset,
                payload: &buf[DATA_HEADER_LEN..],
            })
        }
        Some(_) => Err(TransferError::Malformed("unknown frame type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct_view() -> PairView {
        use crate::path::{CandidateType, PathKind, Transport};
        PairView {
            kind: PathKind::Direct,
            local: CandidateType::Srflx,
            remote: CandidateType::Prflx,
            protocol: Transport::Udp,
        }
    }

    #[test]
    fn control_golden() {
        let cases = [
            (
                Control::Hello {
                    version: 2,
                    role: Role::Sender,
                    seen_peer: false,
                    max_frame: 262144,
                    path: None,
                },
                r#"{"t":"hello","version":2,"role":"sender","seen_peer":false,"max_frame":262144}"#,
            ),
            (
                Control::Hello {
                    version: 2,
                    role: Role::Receiver,
                    seen_peer: true,
                    max_frame: 262144,
                    path: Some(direct_view()),
                },
                r#"{"t":"hello","version":2,"role":"receiver","seen_peer":true,"max_frame":262144,"path":{"path":"direct","local":"srflx","remote":"prflx","protocol":"udp"}}"#,
            ),
            (
                Control::Path {
                    path: direct_view(),
                },
                r#"{"t":"path","path":{"path":"direct","local":"srflx","remote":"prflx","protocol":"udp"}}"#,
            ),
            (
                Control::Offer {
                    total_files: 2,
                    total_bytes: 5,
                    files: vec![OfferEntry::file("a/b.txt", 5), OfferEntry::dir("a/empty")],
                },
                r#"{"t":"offer","total_files":2,"total_bytes":5,"files":[{"path":"a/b.txt","size":5},{"path":"a/empty","size":0,"dir":true}]}"#,
            ),
            (
                Control::Device {
                    device: crate::device::DeviceProof {
                        key: "a2V5".into(),
                        sig: "c2ln".into(),
                        name: "phone".into(),
                        pair: None,
                    },
                },
                r#"{"t":"device","device":{"key":"a2V5","sig":"c2ln","name":"phone"}}"#,
            ),
            (Control::Accept { resume: vec![] }, r#"{"t":"accept"}"#),
            (
                Control::Accept {
                    resume: vec![Held {
                        index: 1,
                        offset: 4096,
                        blake3: "cd".into(),
                    }],
                },
                r#"{"t":"accept","resume":[{"index":1,"offset":4096,"blake3":"cd"}]}"#,
            ),
            (
                Control::Resume {
                    files: vec![
                        ResumeAt {
                            index: 1,
                            offset: 4096,
                        },
                        ResumeAt {
                            index: 4,
                            offset: 0,
                        },
                    ],
                },
                r#"{"t":"resume","files":[{"index":1,"offset":4096},{"index":4,"offset":0}]}"#,
            ),
            (
                Control::FileEnd {
                    index: 3,
                    blake3: "ab".into(),
                },
                r#"{"t":"file_end","index":3,"blake3":"ab"}"#,
            ),
            (
                Control::FileAck { index: 3 },
                r#"{"t":"file_ack","index":3}"#,
            ),
            (Control::Complete, r#"{"t":"complete"}"#),
            (
                Control::Cancel {
                    reason: CancelReason::NoSpace,
                    message: "disk full".into(),
                },
                r#"{"t":"cancel","reason":"no_space","message":"disk full"}"#,
            ),
        ];
        for (c, json) in cases {
            let enc = encode_control(&c);
            assert_eq!(enc[0], 0);
            assert_eq!(std::str::from_utf8(&enc[1..]).unwrap(), json);
            assert_eq!(decode(&enc).unwrap(), Frame::Control(c));
        }
    }

    #[test]
    fn data_round_trip() {
        let mut buf = vec![0u8; DATA_HEADER_LEN + 3];
        buf[DATA_HEADER_LEN..].copy_from_slice(b"xyz");
        write_data_header(&mut buf, 7, 1 << 40);
        assert_eq!(
            decode(&buf).unwrap(),
            Frame::Data {
                index: 7,
                offset: 1 << 40,
                payload: b"xyz"
            }
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(decode(&[]), Err(TransferError::Malformed("empty frame")));
        assert_eq!(
            decode(&[1, 0, 0]),
            Err(TransferError::Malformed("truncated data frame"))
        );
        assert_eq!(
            decode(&[1; DATA_HEADER_LEN]),
            Err(TransferError::Malformed("truncated data frame"))
        );
        assert_eq!(
            decode(&[9, 1]),
            Err(TransferError::Malformed("unknown frame type"))
        );
        assert_eq!(
            decode(b"\x00{\"t\":\"nope\"}"),
            Err(TransferError::Malformed("unreadable control frame"))
        );
        assert_eq!(
            decode(b"\x00{\"t\":\"accept\""),
            Err(TransferError::Malformed("unreadable control frame"))
        );
        let big = vec![1u8; MAX_FRAME + 1];
        assert_eq!(
            decode(&big),
            Err(TransferError::Oversized {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
    }
}
