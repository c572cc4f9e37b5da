//! Registered inboxes ([`protocol::inbox`]): which connection is inbox `ID` right now.
//!
//! Invariants:
//! - An id is registered only by a connection that signed this server's fresh nonce with the
//!   key the id is derived from ([`Pending`]); nothing else can claim it.
//! - One connection per id: a new registration (the inbox restarted, or its old socket died
//!   without closing) replaces the old one, which is told to close.
//! - A registration lives exactly as long as its connection: it is removed when that
//!   connection ends (and only by that connection: a replaced one does not remove its
//!   successor). Nothing about an inbox is kept after, but for its record in Redis when
//!   nodes share it (`crate::cluster`), deleted with it or expiring within 15 s.
//! - With other nodes, the newest registration wins there too: one found made through
//!   another node replaces this node's ([`Inboxes::moved_away`]).

use protocol::inbox::{self, InboxError, InboxId, NONCE_BYTES};
use protocol::signal::{ErrorCode, InboxStatus, MAX_LOOK, MAX_SEALED_NAME, ServerMessage};
use rand::RngCore as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::rooms::{Outbox, Outgoing};

/// A registration in progress on one connection: the id and key it claims and the nonce
/// it must sign.
#[derive(Debug)]
pub(crate) struct Pending {
    id: InboxId,
    key: ed25519_dalek::VerifyingKey,
    nonce: [u8; NONCE_BYTES],
    /// Its name, sealed (the server cannot read it).
    name: Option<String>,
}

impl Pending {
    /// Check the claimed key is `id`'s and make a challenge for it.
    pub fn start(
        id: &str,
        key: &str,
        name: Option<String>,
    ) -> Result<(Self, ServerMessage), ErrorCode> {
        let id = InboxId::parse(id).map_err(|_| ErrorCode::Malformed)?;
        if name.as_ref().is_some_and(|n| n.len() > MAX_SEALED_NAME) {
            return Err(ErrorCode::Malformed);
        }
        let key = inbox::key_of(&id, key).map_err(|e| match e {
            InboxError::NotYours => ErrorCode::NotYours,
            _ => ErrorCode::Malformed,
        })?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let challenge = ServerMessage::Challenge {
            nonce: inbox::encode(&nonce),
        };
        let pending = Self {
            id,
            key,
            nonce,
            name,
        };
        Ok((pending, challenge))
    }

    /// The id and sealed name, if `sig` proves the key.
    pub fn prove(self, sig: &str) -> Result<(InboxId, Option<String>), ErrorCode> {
        inbox::verify_proof(&self.key, &self.id, &self.nonce, sig)
            .map_err(|_| ErrorCode::NotYours)?;
        Ok((self.id, self.name))
    }
}

/// A connection's hold on an id, removed when dropped by [`Inboxes::unregister`].
#[derive(Debug)]
pub(crate) struct Registration {
    pub id: InboxId,
    conn: u64,
}

/// A registered inbox: its connection (a number and its outbox) and sealed name.
#[derive(Debug)]
struct Registered {
    conn: u64,
    tx: Outbox,
    name: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Inboxes {
    by_id: Mutex<HashMap<InboxId, Registered>>,
    next_conn: AtomicU64,
}

impl Inboxes {
    /// `id` is now the connection whose outbox is `tx`; a previous one is told `replaced`
    /// and closes (a copy of the inbox still running stops on it).
    pub fn register(&self, id: InboxId, tx: Outbox, name: Option<String>) -> Registration {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let old = self
            .lock()
            .insert(id.clone(), Registered { conn, tx, name });
        if let Some(Registered { tx: old, .. }) = old {
            let code = ErrorCode::Replaced;
            // (With its outbox full it is not reading: it stays until its heartbeat ends it,
            // no longer registered.)
            let _ = old.try_send(Outgoing::Final(ServerMessage::Error {
                code,
                message: code.explain().to_string(),
            }));
        }
        Registration { id, conn }
    }

    /// The connection of `reg` ended.
    pub fn unregister(&self, reg: &Registration) {
        let mut map = self.lock();
        if map.get(&reg.id).is_some_and(|r| r.conn == reg.conn) {
            map.remove(&reg.id);
        }
    }

    /// Tell inbox `id` that a drop waits in `room`.
    pub fn knock(&self, id: &InboxId, room: &str) -> Result<(), ErrorCode> {
        let map = self.lock();
        let r = map.get(id).ok_or(ErrorCode::InboxOffline)?;
        r.tx.try_send(Outgoing::Msg(ServerMessage::Drop {
            room: room.to_string(),
        }))
        .map_err(|_| ErrorCode::InboxOffline)
    }

    /// Every inbox registered here.
    pub fn ids(&self) -> Vec<InboxId> {
        self.lock().keys().cloned().collect()
    }

    /// The sealed name of inbox `id` if it is registered here (`Some(None)`: without one).
    pub fn name(&self, id: &InboxId) -> Option<Option<String>> {
        self.lock().get(id).map(|r| r.name.clone())
    }

    /// Inbox `id` registered through another node since: its connection here is told
    /// `replaced` and closes, as a replaced registration here would.
    pub fn moved_away(&self, id: &InboxId) {
        if let Some(Registered { tx, .. }) = self.lock().remove(id) {
            let code = ErrorCode::Replaced;
            let _ = tx.try_send(Outgoing::Final(ServerMessage::Error {
                code,
                message: code.explain().to_string(),
            }));
        }
    }

    /// Whether inbox `id` is connected.
    pub fn online(&self, id: &InboxId) -> bool {
        self.lock().contains_key(id)
    }

    /// `look`: which of `ids` are online, with their sealed names. An id that is not one
    /// is simply offline (nothing to tell a prober).
    pub fn look(&self, ids: &[String]) -> Result<ServerMessage, ErrorCode> {
        if ids.len() > MAX_LOOK {
            return Err(ErrorCode::Malformed);
        }
        let map = self.lock();
        let inboxes = ids
            .iter()
            .map(|id| {
                let r = InboxId::parse(id).ok().and_then(|id| map.get(&id));
                InboxStatus {
                    inbox: id.clone(),
                    online: r.is_some(),
                    name: r.and_then(|r| r.name.clone()),
                }
            })
            .collect();
        Ok(ServerMessage::Inboxes { inboxes })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InboxId, Registered>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};
    use tokio::sync::mpsc;

    fn owner(seed: u8) -> (SigningKey, String, String) {
        let k = SigningKey::from_bytes(&[seed; 32]);
        let id = InboxId::of_key(k.verifying_key().as_bytes()).to_string();
        let key = inbox::encode(k.verifying_key().as_bytes());
        (k, id, key)
    }

    fn sign(k: &SigningKey, id: &str, challenge: &ServerMessage) -> String {
        let ServerMessage::Challenge { nonce } = challenge else {
            panic!("{challenge:?}")
        };
        let nonce =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, nonce).unwrap();
        let id = InboxId::parse(id).unwrap();
        inbox::encode(&k.sign(&inbox::proof_message(&id, &nonce)).to_bytes())
    }

    #[test]
    fn the_key_holder_registers_and_others_cannot() {
        let (k, id, key) = owner(1);
        let (p, challenge) = Pending::start(&id, &key, Some("c2VhbGVk".into())).unwrap();
        let sig = sign(&k, &id, &challenge);
        let (proved, name) = p.prove(&sig).unwrap();
        assert_eq!(
            (proved.as_str(), name.as_deref()),
            (id.as_str(), Some("c2VhbGVk"))
        );
        // Someone else's key for this id, or a signature for another challenge.
        let (other, _, their_key) = owner(2);
        assert_eq!(
            Pending::start(&id, &their_key, None).unwrap_err(),
            ErrorCode::NotYours
        );
        let (p, challenge) = Pending::start(&id, &key, None).unwrap();
        assert_eq!(
            p.prove(&sign(&other, &id, &challenge)).unwrap_err(),
            ErrorCode::NotYours
        );
        let (p, _) = Pending::start(&id, &key, None).unwrap();
        assert_eq!(
            p.prove(&sig).unwrap_err(),
            ErrorCode::NotYours,
            "a replayed proof"
        );
        assert_eq!(
            Pending::start("nope", &key, None).unwrap_err(),
            ErrorCode::Malformed
        );
        let long = "n".repeat(MAX_SEALED_NAME + 1);
        assert_eq!(
            Pending::start(&id, &key, Some(long)).unwrap_err(),
            ErrorCode::Malformed
        );
    }

    #[tokio::test]
    async fn a_new_registration_replaces_the_old_and_lives_as_long_as_its_connection() {
        let inboxes = Inboxes::default();
        let id = InboxId::parse(&owner(1).1).unwrap();
        assert_eq!(inboxes.knock(&id, "r1"), Err(ErrorCode::InboxOffline));
        let (tx1, mut rx1) = mpsc::channel(4);
        let first = inboxes.register(id.clone(), tx1, Some("c2VhbGVk".into()));
        let other = owner(2).1;
        let look = inboxes
            .look(&[id.to_string(), other.clone(), "nope".into()])
            .unwrap();
        let ServerMessage::Inboxes { inboxes: seen } = look else {
            panic!("{look:?}")
        };
        let seen: Vec<_> = seen.iter().map(|s| (s.online, s.name.as_deref())).collect();
        assert_eq!(
            seen,
            [(true, Some("c2VhbGVk")), (false, None), (false, None)]
        );
        let many = vec![other; MAX_LOOK + 1];
        assert_eq!(inboxes.look(&many).unwrap_err(), ErrorCode::Malformed);
        inboxes.knock(&id, "r1").unwrap();
        assert!(
            matches!(rx1.recv().await, Some(Outgoing::Msg(ServerMessage::Drop { room })) if room == "r1")
        );
        let (tx2, mut rx2) = mpsc::channel(4);
        let second = inboxes.register(id.clone(), tx2, None);
        assert!(matches!(
            rx1.recv().await,
            Some(Outgoing::Final(ServerMessage::Error {
                code: ErrorCode::Replaced,
                ..
            }))
        ));
        // The replaced connection ending does not take its successor's registration.
        inboxes.unregister(&first);
        inboxes.knock(&id, "r2").unwrap();
        assert!(
            matches!(rx2.recv().await, Some(Outgoing::Msg(ServerMessage::Drop { room })) if room == "r2")
        );
        inboxes.unregister(&second);
        assert!(!inboxes.online(&id));
    }
}
