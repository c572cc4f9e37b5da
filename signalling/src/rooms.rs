//! The room registry: who is waiting for whom, and forwarding between the two peers of a room.
//!
//! Invariants:
//! - A room has one creator and at most one joiner at a time. Once someone joined, the room's
//!   number is retired and no one else can join, so each room allows one PAKE attempt and a
//!   typed code gets one guess.
//! - Each peer sends at most one PAKE message per join.
//! - When either peer leaves or aborts, the room is gone and the other peer is told — except
//!   that a room created with `hold` outlives its joiner's connection closing: the creator is
//!   told (`peer_left`) and the room waits for a joiner again (a restarted receiver coming
//!   back on the same link), with a fresh PAKE. At most [`MAX_REJOINS`] times; a room joined
//!   by its number gets that number back once only, and a room takes at most
//!   [`MAX_CODE_TRIES`] key exchanges with a typed code's password however its joiners came
//!   in (by number or by the id they learnt), so a code costs at most one more online guess.
//!   An abort still ends a held room.
//! - An unjoined room lives `ttl`; a joined one `max_lifetime` from its first join (then both
//!   peers are told it expired and their connections close); rejoining does not extend it.
//! - Nothing here looks inside sealed payloads; they are forwarded as they came.

use protocol::signal::{AbortReason, AuthKind, ErrorCode, RoomRef, ServerMessage};
use rand::Rng as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// What a connection task is told to do.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Msg(ServerMessage),
    /// Send this message, then close the connection.
    Final(ServerMessage),
}

pub(crate) type Outbox = mpsc::Sender<Outgoing>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Creator,
    Joiner,
}

/// A connection's place in a room.
#[derive(Debug, Clone)]
pub(crate) struct Membership {
    pub room: String,
    pub side: Side,
}

#[derive(Debug)]
struct Slot {
    tx: Outbox,
    pake_sent: bool,
}

#[derive(Debug)]
struct Room {
    /// The number a typed code joins by, while it can.
    number: Option<u32>,
    /// Unjoined: when it expires. Joined: when its lifetime ends.
    expires: Instant,
    creator: Slot,
    joiner: Option<Slot>,
    /// What happens when the joiner's connection closes.
    hold: Hold,
}

/// A held room's record of its joins (see the module invariants).
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    /// The creator asked to keep the room for its joiner to come back.
    asked: bool,
    /// The room was joined before: its lifetime runs from then.
    joined: bool,
    /// The number the current joiner used (retired while it is in).
    number_used: Option<u32>,
    /// The number was handed back once already.
    number_returned: bool,
    rejoins: u8,
    /// Key exchanges a joiner ran with a typed code's password (each is one guess at it).
    code_tries: u8,
}

/// Key exchanges with a typed code a room allows in all, whichever way its joiners came in
/// (a joiner learns the room id and could come back by it): the first try and one return.
const MAX_CODE_TRIES: u8 = 2;

/// How many times a held room may be joined again after its joiner left.
pub(crate) const MAX_REJOINS: u8 = 32;

impl Room {
    fn slot(&mut self, side: Side) -> Option<&mut Slot> {
        match side {
            Side::Creator => Some(&mut self.creator),
            Side::Joiner => self.joiner.as_mut(),
        }
    }

    fn other(&mut self, side: Side) -> Option<&mut Slot> {
        match side {
            Side::Creator => self.joiner.as_mut(),
            Side::Joiner => Some(&mut self.creator),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    rooms: HashMap<String, Room>,
    numbers: HashMap<u32, String>,
}

#[derive(Debug)]
pub(crate) struct Rooms {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_lifetime: Duration,
    max_rooms: usize,
    metrics: std::sync::Arc<Metrics>,
}

/// At most one room number in this many is taken (see [`Rooms::pick_number`]).
const NUMBER_DENSITY: usize = 20;

const ROOM_ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

fn new_room_id() -> String {
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| ROOM_ID_ALPHABET[rng.gen_range(0..ROOM_ID_ALPHABET.len())] as char)
        .collect()
}

/// Deliver to a peer; a peer whose queue is full is not reading and gets nothing more.
fn deliver(slot: &Slot, msg: ServerMessage) -> bool {
    slot.tx.try_send(Outgoing::Msg(msg)).is_ok()
}

impl Rooms {
    pub fn new(
        ttl: Duration,
        max_lifetime: Duration,
        max_rooms: usize,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ttl,
            max_lifetime,
            max_rooms,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Short numbers stay short while few rooms are waiting: 3 digits, widening as more wait
    /// so that at most one number in [`NUMBER_DENSITY`] is taken — a joiner guessing numbers
    /// (at the room rate limit) finds a room rarely, and the misses show in the metrics.
    fn pick_number(inner: &Inner) -> Option<u32> {
        let mut rng = rand::thread_rng();
        for max in [999u32, 9_999, 99_999, protocol::invite::MAX_ROOM_NUMBER] {
            if (inner.numbers.len() + 1) * NUMBER_DENSITY > max as usize {
                continue;
            }
            for _ in 0..32 {
                let n = rng.gen_range(1..=max);
                if !inner.numbers.contains_key(&n) {
                    return Some(n);
                }
            }
        }
        None
    }

    /// Create a room at `now` (it expires unjoined `ttl` later), with a number for a typed
    /// code only if its creator shows one (`code`).
    /// `hold`: keep the room for its joiner to come back (see the module invariants).
    pub fn create(
        &self,
        tx: Outbox,
        now: Instant,
        code: bool,
        hold: bool,
    ) -> Result<(Membership, Option<u32>), ErrorCode> {
        let mut inner = self.lock();
        if inner.rooms.len() >= self.max_rooms {
            return Err(ErrorCode::ServerBusy);
        }
        let number = match code {
            true => Some(Self::pick_number(&inner).ok_or(ErrorCode::ServerBusy)?),
            false => None,
        };
        let mut id = new_room_id();
        while inner.rooms.contains_key(&id) {
            id = new_room_id();
        }
        if let Some(n) = number {
            inner.numbers.insert(n, id.clone());
        }
        inner.rooms.insert(
            id.clone(),
            Room {
                number,
                expires: now + self.ttl,
                creator: Slot {
                    tx,
                    pake_sent: false,
                },
                joiner: None,
                hold: Hold {
                    asked: hold,
                    ..Hold::default()
                },
            },
        );
        self.metrics.rooms_created.fetch_add(1, Ordering::Relaxed);
        Ok((
            Membership {
                room: id,
                side: Side::Creator,
            },
            number,
        ))
    }

    /// The creator of a waiting room shows a code after all: the room's number (a new one if
    /// it had none). `None` once the room was joined (too late; not an error, as the join and
    /// the wish can cross).
    pub fn show_code(&self, m: &Membership) -> Result<Option<u32>, ErrorCode> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let room = inner.rooms.get(&m.room).ok_or(ErrorCode::NoSuchRoom)?;
        if m.side != Side::Creator || room.joiner.is_some() {
            return Ok(None);
        }
        if let Some(n) = room.number {
            return Ok(Some(n));
        }
        let n = Self::pick_number(inner).ok_or(ErrorCode::ServerBusy)?;
        inner.numbers.insert(n, m.room.clone());
        if let Some(room) = inner.rooms.get_mut(&m.room) {
            room.number = Some(n);
        }
        Ok(Some(n))
    }

    /// Join at `now`: an expired room counts as gone even before the sweeper removes it.
    pub fn join(&self, tx: Outbox, which: &RoomRef, now: Instant) -> Result<Membership, ErrorCode> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let id = match which {
            RoomRef::Id(id) => id.clone(),
            RoomRef::Number(n) => match inner.numbers.get(n) {
                Some(id) => id.clone(),
                None => {
                    self.metrics.code_misses.fetch_add(1, Ordering::Relaxed);
                    return Err(ErrorCode::NoSuchRoom);
                }
            },
        };
        let room = inner.rooms.get_mut(&id).ok_or(ErrorCode::NoSuchRoom)?;
        if room.joiner.is_some() {
            return Err(ErrorCode::RoomFull);
        }
        if room.expires <= now {
            return Err(ErrorCode::NoSuchRoom);
        }
        room.joiner = Some(Slot {
            tx,
            pake_sent: false,
        });
        let counter = match std::mem::replace(&mut room.hold.joined, true) {
            true => &self.metrics.rooms_rejoined,
            false => {
                room.expires = now + self.max_lifetime;
                &self.metrics.rooms_joined
            }
        };
        room.hold.number_used = match which {
            RoomRef::Number(n) => Some(*n),
            RoomRef::Id(_) => None,
        };
        if let Some(n) = room.number.take() {
            inner.numbers.remove(&n);
        }
        deliver(&room.creator, ServerMessage::PeerJoined);
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(Membership {
            room: id,
            side: Side::Joiner,
        })
    }

    pub fn pake(&self, m: &Membership, auth: AuthKind, msg: String) -> Result<(), ErrorCode> {
        let mut inner = self.lock();
        let room = inner.rooms.get_mut(&m.room).ok_or(ErrorCode::NoPeer)?;
        if room.slot(m.side).ok_or(ErrorCode::NotInRoom)?.pake_sent {
            return Err(ErrorCode::PakeAlreadySent);
        }
        if m.side == Side::Joiner && auth == AuthKind::Code {
            if room.hold.code_tries >= MAX_CODE_TRIES {
                return Err(ErrorCode::PakeAlreadySent);
            }
            room.hold.code_tries += 1;
        }
        // Only a PAKE that reaches the other peer uses up this peer's one attempt.
        let other = room.other(m.side).ok_or(ErrorCode::NoPeer)?;
        deliver(other, ServerMessage::Pake { auth, msg });
        if let Some(me) = room.slot(m.side) {
            me.pake_sent = true;
        }
        Ok(())
    }

    pub fn sealed(&self, m: &Membership, data: String) -> Result<(), ErrorCode> {
        let mut inner = self.lock();
        let room = inner.rooms.get_mut(&m.room).ok_or(ErrorCode::NoPeer)?;
        let other = room.other(m.side).ok_or(ErrorCode::NoPeer)?;
        self.metrics
            .messages_relayed
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes_relayed
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        deliver(other, ServerMessage::Sealed { data });
        Ok(())
    }

    /// Tell the other peer of `m`'s room (if it is there).
    pub fn to_other(&self, m: &Membership, msg: ServerMessage) {
        let mut inner = self.lock();
        if let Some(other) = inner.rooms.get_mut(&m.room).and_then(|r| r.other(m.side)) {
            deliver(other, msg);
        }
    }

    /// A peer gave up: the other is told and the room is gone.
    pub fn abort(&self, m: &Membership, reason: AbortReason) {
        self.remove(m, ServerMessage::PeerAborted { reason });
        if reason == AbortReason::WrongSecret {
            self.metrics.pake_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A peer's connection closed. A held room whose joiner left waits for it again; one
    /// that can be held no more ends, and its creator is told the room is over (not just
    /// that the joiner left, which it would wait out).
    pub fn leave(&self, m: &Membership) {
        if m.side == Side::Joiner {
            match self.vacate(m) {
                Some(true) => return,
                Some(false) => {
                    let over = ServerMessage::Error {
                        code: ErrorCode::Expired,
                        message: "this link was used to come back too many times; send again"
                            .into(),
                    };
                    return self.remove(m, over);
                }
                None => {}
            }
        }
        self.remove(m, ServerMessage::PeerLeft);
    }

    /// The joiner of a held room left: free its place for a rejoin, if the room allows one
    /// more (`Some(true)`; `Some(false)`: it allows no more). `None`: not a held room.
    fn vacate(&self, m: &Membership) -> Option<bool> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let room = inner.rooms.get_mut(&m.room).filter(|r| r.hold.asked)?;
        if room.hold.rejoins >= MAX_REJOINS {
            return Some(false);
        }
        room.hold.rejoins += 1;
        room.joiner = None;
        room.creator.pake_sent = false;
        // A typed code may come back once: one more online guess at most.
        if let Some(n) = room.hold.number_used.take()
            && !room.hold.number_returned
            && !inner.numbers.contains_key(&n)
        {
            room.hold.number_returned = true;
            room.number = Some(n);
            inner.numbers.insert(n, m.room.clone());
        }
        deliver(&room.creator, ServerMessage::PeerLeft);
        Some(true)
    }

    fn remove(&self, m: &Membership, tell_other: ServerMessage) {
        let mut inner = self.lock();
        if let Some(mut room) = inner.rooms.remove(&m.room) {
            if let Some(n) = room.number {
                inner.numbers.remove(&n);
            }
            if let Some(other) = room.other(m.side) {
                deliver(other, tell_other);
            }
        }
    }

    /// Close rooms whose time is up: unjoined past their `ttl`, joined past their lifetime
    /// (each counted in the metrics). Returns how many went.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        let expired: Vec<String> = inner
            .rooms
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let ended = || {
            Outgoing::Final(ServerMessage::Error {
                code: ErrorCode::Expired,
                message: ErrorCode::Expired.explain().into(),
            })
        };
        for id in &expired {
            if let Some(room) = inner.rooms.remove(id) {
                if let Some(n) = room.number {
                    inner.numbers.remove(&n);
                }
                for slot in std::iter::once(&room.creator).chain(&room.joiner) {
                    let _ = slot.tx.try_send(ended());
                }
                let counter = match room.hold.joined {
                    false => &self.metrics.rooms_expired,
                    true => &self.metrics.rooms_ended,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        expired.len()
    }

    pub fn active(&self) -> usize {
        self.lock().rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(1800);
    const LIFETIME: Duration = Duration::from_secs(7200);

    fn rooms() -> Rooms {
        Rooms::new(TTL, LIFETIME, 100, Default::default())
    }

    fn outbox() -> (Outbox, mpsc::Receiver<Outgoing>) {
        mpsc::channel(16)
    }

    fn next(rx: &mut mpsc::Receiver<Outgoing>) -> Option<ServerMessage> {
        match rx.try_recv().ok()? {
            Outgoing::Msg(m) | Outgoing::Final(m) => Some(m),
        }
    }

    #[test]
    fn an_unjoined_room_expires_on_time_and_not_before() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, mut creator) = outbox();
        let (m, number) = r.create(tx, t0, true, false).unwrap();
        let number = number.unwrap();
        assert_eq!(r.sweep(t0 + TTL - Duration::from_millis(1)), 0);
        // At the deadline it is gone for joiners, by id and by number, before any sweep.
        let (j, _) = outbox();
        assert_eq!(
            r.join(j.clone(), &RoomRef::Id(m.room.clone()), t0 + TTL)
                .unwrap_err(),
            ErrorCode::NoSuchRoom
        );
        assert_eq!(r.sweep(t0 + TTL), 1);
        assert_eq!(
            next(&mut creator),
            Some(ServerMessage::Error {
                code: ErrorCode::Expired,
                message: ErrorCode::Expired.explain().into()
            })
        );
        assert_eq!(
            r.join(j, &RoomRef::Number(number), t0 + TTL).unwrap_err(),
            ErrorCode::NoSuchRoom
        );
        assert_eq!(r.active(), 0);
    }

    #[test]
    fn a_joined_room_outlives_its_ttl_then_ends_at_its_lifetime() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, mut creator) = outbox();
        let (m, number) = r.create(tx, t0, true, false).unwrap();
        let number = number.unwrap();
        let (jtx, mut joiner) = outbox();
        let joined = t0 + TTL / 2;
        let j = r.join(jtx, &RoomRef::Number(number), joined).unwrap();
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        assert_eq!(r.sweep(t0 + TTL * 2), 0, "a joined room outlives the wait");
        r.sealed(&m, "c3RpbGw=".into()).unwrap();
        assert_eq!(
            next(&mut joiner),
            Some(ServerMessage::Sealed {
                data: "c3RpbGw=".into()
            })
        );
        r.sealed(&j, "YmFjaw==".into()).unwrap();
        assert_eq!(
            next(&mut creator),
            Some(ServerMessage::Sealed {
                data: "YmFjaw==".into()
            })
        );
        // Its number was retired on join.
        let (x, _) = outbox();
        assert_eq!(
            r.join(x, &RoomRef::Number(number), t0 + TTL).unwrap_err(),
            ErrorCode::NoSuchRoom
        );
        // Its lifetime ends it, for both.
        assert_eq!(r.sweep(joined + LIFETIME - Duration::from_millis(1)), 0);
        assert_eq!(r.sweep(joined + LIFETIME), 1);
        let expired = Some(ServerMessage::Error {
            code: ErrorCode::Expired,
            message: ErrorCode::Expired.explain().into(),
        });
        assert_eq!(next(&mut creator), expired);
        assert_eq!(next(&mut joiner), expired);
        assert_eq!(r.active(), 0);
    }

    #[test]
    fn the_other_peer_can_be_told() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, mut creator) = outbox();
        let (m, _) = r.create(tx, t0, true, false).unwrap();
        let (jtx, _joiner) = outbox();
        let j = r.join(jtx, &RoomRef::Id(m.room.clone()), t0).unwrap();
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        r.to_other(&j, ServerMessage::PeerLeft);
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerLeft));
    }

    #[test]
    fn numbers_widen_so_few_guesses_hit_a_room() {
        let r = rooms();
        let t0 = Instant::now();
        let mut keep = Vec::new();
        let mut numbers = Vec::new();
        for _ in 0..60 {
            let (tx, rx) = outbox();
            keep.push(rx);
            numbers.push(r.create(tx, t0, true, false).unwrap().1.unwrap());
        }
        // 3 digits while at most one number in NUMBER_DENSITY is taken, then up to 4.
        let three = 999 / NUMBER_DENSITY;
        assert!(numbers[..three].iter().all(|&n| n <= 999), "{numbers:?}");
        assert!(numbers[three..].iter().all(|&n| n <= 9_999), "{numbers:?}");
        assert!(numbers[three..].iter().any(|&n| n > 999), "{numbers:?}");
        // A room whose creator shows no code takes no number.
        let (tx, _rx) = outbox();
        assert_eq!(r.create(tx, t0, false, false).unwrap().1, None);
    }

    #[test]
    fn a_held_room_waits_for_its_joiner_to_come_back_with_a_fresh_key_exchange() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, mut creator) = outbox();
        let (m, _) = r.create(tx, t0, false, true).unwrap();
        let id = RoomRef::Id(m.room.clone());
        let (jtx, _joiner) = outbox();
        let j = r.join(jtx, &id, t0).unwrap();
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        r.pake(&m, AuthKind::Link, "YQ==".into()).unwrap();
        r.pake(&j, AuthKind::Link, "Yg==".into()).unwrap();
        assert!(matches!(
            next(&mut creator),
            Some(ServerMessage::Pake { .. })
        ));
        r.leave(&j);
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerLeft));
        assert_eq!(r.active(), 1, "the room waits");
        // The one who comes back runs the key exchange again, and so does the creator.
        let (jtx, mut joiner) = outbox();
        let later = t0 + LIFETIME / 2;
        let j = r.join(jtx, &id, later).unwrap();
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        r.pake(&m, AuthKind::Link, "Yw==".into()).unwrap();
        assert_eq!(
            next(&mut joiner),
            Some(ServerMessage::Pake {
                auth: AuthKind::Link,
                msg: "Yw==".into()
            })
        );
        assert_eq!(
            r.pake(&m, AuthKind::Link, "ZA==".into()).unwrap_err(),
            ErrorCode::PakeAlreadySent
        );
        // Still one joiner at a time.
        let (x, _) = outbox();
        assert_eq!(r.join(x, &id, later).unwrap_err(), ErrorCode::RoomFull);
        // Coming back does not extend the room's life.
        assert_eq!(r.sweep(t0 + LIFETIME), 1);
        let _ = j;
    }

    #[test]
    fn a_held_room_comes_back_a_bounded_number_of_times_and_never_after_an_abort() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, mut creator) = outbox();
        let (m, _) = r.create(tx, t0, false, true).unwrap();
        let id = RoomRef::Id(m.room.clone());
        // The creator reads what it is told as it comes (its queue is bounded).
        let mut told = Vec::new();
        for _ in 0..MAX_REJOINS {
            let (jtx, _j) = outbox();
            let j = r.join(jtx, &id, t0).unwrap();
            r.leave(&j);
            while let Some(m) = next(&mut creator) {
                told.push(m);
            }
        }
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &id, t0).unwrap();
        r.leave(&j);
        assert_eq!(r.active(), 0, "the last leave ends it");
        while let Some(m) = next(&mut creator) {
            told.push(m);
        }
        let last = told.pop();
        assert!(
            told.iter()
                .all(|m| matches!(m, ServerMessage::PeerJoined | ServerMessage::PeerLeft))
        );
        // The creator learns the room is over, not merely that its joiner left.
        assert!(
            matches!(
                last,
                Some(ServerMessage::Error {
                    code: ErrorCode::Expired,
                    ..
                })
            ),
            "{last:?}"
        );

        let (tx, mut creator) = outbox();
        let (m, _) = r.create(tx, t0, false, true).unwrap();
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &RoomRef::Id(m.room.clone()), t0).unwrap();
        r.abort(&j, AbortReason::WrongSecret);
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        assert_eq!(
            next(&mut creator),
            Some(ServerMessage::PeerAborted {
                reason: AbortReason::WrongSecret
            })
        );
        assert_eq!(r.active(), 0, "an abort ends a held room");

        // Without hold, a leave ends the room as before.
        let (tx, _c) = outbox();
        let (m, _) = r.create(tx, t0, false, false).unwrap();
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &RoomRef::Id(m.room.clone()), t0).unwrap();
        r.leave(&j);
        assert_eq!(r.active(), 0);
    }

    #[test]
    fn a_typed_code_gets_its_held_room_back_once_only() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, _creator) = outbox();
        let (m, number) = r.create(tx, t0, true, true).unwrap();
        let number = RoomRef::Number(number.unwrap());
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &number, t0).unwrap();
        r.leave(&j);
        // Once more by number…
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &number, t0).unwrap();
        r.leave(&j);
        // …then only the link (whose secret no one guesses) joins it.
        let (x, _) = outbox();
        assert_eq!(r.join(x, &number, t0).unwrap_err(), ErrorCode::NoSuchRoom);
        let (jtx, _j) = outbox();
        r.join(jtx, &RoomRef::Id(m.room.clone()), t0).unwrap();

        // A joiner who used the link does not bring the number back.
        let (tx, _creator) = outbox();
        let (m, n) = r.create(tx, t0, true, true).unwrap();
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &RoomRef::Id(m.room.clone()), t0).unwrap();
        r.leave(&j);
        let (x, _) = outbox();
        assert_eq!(
            r.join(x, &RoomRef::Number(n.unwrap()), t0).unwrap_err(),
            ErrorCode::NoSuchRoom
        );
    }

    #[test]
    fn a_typed_code_is_tried_at_most_twice_in_a_room_however_its_joiners_come() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, _creator) = outbox();
        let (m, number) = r.create(tx, t0, true, true).unwrap();
        let id = RoomRef::Id(m.room.clone());
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &RoomRef::Number(number.unwrap()), t0).unwrap();
        r.pake(&j, AuthKind::Code, "YQ==".into()).unwrap();
        r.leave(&j);
        // Back by the room id (learnt from `joined`), with the code's password again.
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &id, t0).unwrap();
        r.pake(&j, AuthKind::Code, "Yg==".into()).unwrap();
        r.leave(&j);
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &id, t0).unwrap();
        assert_eq!(
            r.pake(&j, AuthKind::Code, "Yw==".into()).unwrap_err(),
            ErrorCode::PakeAlreadySent
        );
        // The link's long secret is no guess: it may come back.
        r.pake(&j, AuthKind::Link, "ZA==".into()).unwrap();
    }
}
