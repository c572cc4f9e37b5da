//! Volunteer relays: a peer with a reachable port (a NAS with a forwarded or UPnP-mapped port)
//! runs the bundled TURN code and offers it to a signalling server's relay pool
//! (`native-peer relay --register URL`), so relays need not all be the operator's.
//!
//! The conversation, JSON text frames on the server's `/relay` WebSocket:
//!
//! ```text
//! volunteer  offer{version, token?}
//! server     welcome{id, secret, public_ip}        | refused{code, message}
//!            (the volunteer starts TURN with `secret`, advertising `public_ip`, and maps its ports)
//! volunteer  ready{udp_port, tcp_port?}
//! server     listed{}                              | refused{code: unreachable, …}
//!            (after a STUN binding from the server to public_ip:udp_port was answered)
//! volunteer  load{allocations, relayed_bytes}      every LOAD_EVERY; silence for
//!                                                  LOAD_STALE takes it off the list
//! ```
//!
//! Invariants:
//! - `secret` is the server's master TURN secret run through HMAC with the relay's `id`
//!   (`signalling::credentials`): the relay checks the credentials minted for it and can mint
//!   none for the server's own TURN or another relay.
//! - The server puts in a relay's URLs the address it saw the volunteer connect from, never one
//!   the volunteer names, so a registration cannot point peers' traffic at a third party.
//! - A relay is handed to rooms only while its WebSocket lives: it leaves the pool when that
//!   closes (a volunteer that dies takes its place with it).

use serde::{Deserialize, Serialize};

/// Version of this conversation.
pub const RELAY_VERSION: u32 = 1;

/// How often a listed volunteer reports its load.
pub const LOAD_EVERY_SECS: u64 = 5;
/// A volunteer silent this long leaves the pool.
pub const LOAD_STALE_SECS: u64 = 20;

/// Volunteer → server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum VolunteerMessage {
    /// Offer a relay. `token`: issued by the operator (`signalling --issue-relay-token`),
    /// needed unless the server takes any volunteer.
    Offer {
        version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// TURN runs, reachable on these ports of the address the server saw.
    Ready {
        udp_port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tcp_port: Option<u16>,
    },
    /// Allocations now, and bytes relayed since start.
    Load {
        allocations: u64,
        relayed_bytes: u64,
    },
}

/// Server → volunteer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PoolMessage {
    /// Accepted: the relay's id, its TURN secret (base64) and the address it is reached at.
    Welcome {
        id: String,
        secret: String,
        public_ip: String,
    },
    /// The relay is in the pool: rooms get it from now on.
    Listed,
    /// Not accepted (or no longer): why, and what to do.
    Refused { code: RelayRefusal, message: String },
}

/// Why a volunteer relay is not (or no longer) in the pool.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RelayRefusal {
    /// This server takes no volunteer relays.
    NotAccepted,
    /// The token is missing, malformed or not this server's.
    BadToken,
    /// The token's time is over.
    ExpiredToken,
    /// The server's STUN binding to the relay's port got no answer.
    Unreachable,
    /// The pool is full.
    PoolFull,
    UnsupportedVersion,
    Malformed,
    /// The volunteer stopped reporting its load.
    Silent,
    ShuttingDown,
    /// A code this version does not know (a newer server's).
    #[serde(other)]
    Other,
}

impl RelayRefusal {
    /// Whether registering again cannot help until someone changes something (a token, a
    /// router, a version); otherwise the volunteer tries again later (a server restarting,
    /// a full pool, a report lost on the way).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::PoolFull | Self::Silent | Self::ShuttingDown)
    }

    /// What the volunteer's owner should read.
    pub fn explain(self) -> &'static str {
        match self {
            Self::NotAccepted => "this server takes no volunteer relays",
            Self::BadToken => {
                "the relay token is missing or not this server's: ask its operator for one \
                 (signalling --issue-relay-token) and pass it with --token"
            }
            Self::ExpiredToken => "the relay token has expired: ask the operator for a new one",
            Self::Unreachable => {
                "the server could not reach the relay's port from the internet: forward the \
                 UDP port on the router (or allow UPnP) and try again"
            }
            Self::PoolFull => "the server's relay pool is full; try again later",
            Self::UnsupportedVersion => "the server speaks another version; update punchdrop",
            Self::Malformed => "the server could not read a message",
            Self::Silent => "the relay stopped reporting its load and was taken off the pool",
            Self::ShuttingDown => "the server is shutting down; try again in a minute",
            Self::Other => {
                "the server refused the relay for a reason this version does not know; update punchdrop"
            }
        }
    }
}

impl VolunteerMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("relay messages serialise")
    }
}

impl PoolMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("relay messages serialise")
    }

    pub fn refused(code: RelayRefusal) -> Self {
        Self::Refused {
            code,
            message: code.explain().into(),
        }
    }
}

/// What `native-peer relay --json` prints, one JSON line each.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RelayEvent {
    /// TURN runs and is reached at `public` (`IP:PORT`); `mapped`: by UPnP.
    Listening { public: String, mapped: bool },
    /// The server hands this relay to rooms.
    Listed,
    /// The latest load report.
    Load {
        allocations: u64,
        relayed_bytes: u64,
    },
    /// The connection to the server was lost; registering again.
    Reconnecting { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volunteer_messages_golden() {
        let cases = [
            (
                VolunteerMessage::Offer {
                    version: 1,
                    token: Some("t".into()),
                },
                r#"{"type":"offer","version":1,"token":"t"}"#,
            ),
            (
                VolunteerMessage::Offer {
                    version: 1,
                    token: None,
                },
                r#"{"type":"offer","version":1}"#,
            ),
            (
                VolunteerMessage::Ready {
                    udp_port: 3478,
                    tcp_port: Some(3478),
                },
                r#"{"type":"ready","udp_port":3478,"tcp_port":3478}"#,
            ),
            (
                VolunteerMessage::Load {
                    allocations: 2,
                    relayed_bytes: 10,
                },
                r#"{"type":"load","allocations":2,"relayed_bytes":10}"#,
            ),
        ];
        for (msg, json) in cases {
            assert_eq!(msg.to_json(), json);
            assert_eq!(serde_json::from_str::<VolunteerMessage>(json).unwrap(), msg);
        }
    }

    #[test]
    fn pool_messages_golden() {
        let cases = [
            (
                PoolMessage::Welcome {
                    id: "r1".into(),
                    secret: "c2VjcmV0".into(),
                    public_ip: "198.18.0.4".into(),
                },
                r#"{"type":"welcome","id":"r1","secret":"c2VjcmV0","public_ip":"198.18.0.4"}"#,
            ),
            (PoolMessage::Listed, r#"{"type":"listed"}"#),
            (
                PoolMessage::Refused {
                    code: RelayRefusal::ExpiredToken,
                    message: "m".into(),
                },
                r#"{"type":"refused","code":"expired_token","message":"m"}"#,
            ),
        ];
        for (msg, json) in cases {
            assert_eq!(msg.to_json(), json);
            assert_eq!(serde_json::from_str::<PoolMessage>(json).unwrap(), msg);
        }
        let e = RelayEvent::Load {
            allocations: 1,
            relayed_bytes: 5,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"load","allocations":1,"relayed_bytes":5}"#
        );
    }

    #[test]
    fn a_newer_servers_refusal_is_read_as_other() {
        let m: PoolMessage =
            serde_json::from_str(r#"{"type":"refused","code":"new_reason","message":"m"}"#)
                .unwrap();
        assert!(matches!(
            m,
            PoolMessage::Refused {
                code: RelayRefusal::Other,
                ..
            }
        ));
        assert!(RelayRefusal::Other.is_final());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            serde_json::from_str::<VolunteerMessage>(
                r#"{"type":"ready","udp_port":1,"ip":"1.2.3.4"}"#
            )
            .is_err(),
            "a volunteer cannot name the address it is reached at"
        );
    }
}
