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
//! - A held room outlives its creator's connection too: the joiner is told (`peer_left`), a
//!   join meanwhile is refused as `peer_away` (try again), and the creator takes its place
//!   back with the token it got at `created` (`reclaim`) within [`CREATOR_AWAY_MAX`], or the
//!   room ends — unless its client (address or /64) already has [`MAX_AWAY_PER_CLIENT`]
//!   rooms waiting for their creators: what a client makes the server hold stays bounded
//!   by the client. A creator whose connection *broke off* — ended without a close frame,
//!   as the kernel ends a killed program's sockets — rather than closed (a live program
//!   switching sockets says goodbye) or went silent (a network gone), and that is not back
//!   within [`CREATOR_GONE_AFTER`], has stopped: joins are then refused with `peer_gone`,
//!   so a joiner coming back stops at once instead of waiting its timeout. The room itself
//!   waits on as any held room (a late reclaim still takes it). A held room's joiner gets a
//!   token at `joined` too: joining again with it
//!   takes its place back from a connection of its that is still there (a network gone
//!   away without closing it), counted as a rejoin. A connection whose place was taken is
//!   closed, and nothing it does afterwards (leaving included) touches the room.
//! - An unjoined room lives `ttl`; a joined one `max_lifetime` from its first join (then both
//!   peers are told it expired and their connections close); rejoining does not extend it.
//! - Nothing here looks inside sealed payloads; they are forwarded as they came.

use protocol::signal::{AbortReason, AuthKind, ErrorCode, RoomRef, ServerMessage};
use rand::Rng as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::audit::{self, Audit, RoomEnd};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// How a peer's connection ended (a held room tells a stopped creator from an away one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Departure {
    /// With a close frame: a live program closing on purpose (switching sockets, done).
    Closed,
    /// Without one (end of stream, reset): what a killed program's kernel does.
    BrokeOff,
    /// Its pings went unanswered: a network gone away.
    Silent,
}

/// A held room's creator away: since when, and how its connection ended.
#[derive(Debug, Clone, Copy)]
struct Away {
    since: Instant,
    how: Departure,
}

/// What a connection task is told to do (with `--redis`, also sent between nodes).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "k", content = "v", rename_all = "snake_case")]
pub(crate) enum Outgoing {
    Msg(ServerMessage),
    /// Send this message, then close the connection.
    Final(ServerMessage),
    /// Another connection took this one's place in its room (with the place's token): close.
    Replaced,
    /// With `--redis`: the room's node (another) let this connection go with these last
    /// answers; it is in no room.
    Detached(Vec<ServerMessage>),
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
    /// Which connection holds the place: one whose place was taken acts on the room no more.
    conn: u64,
}

#[derive(Debug)]
struct Slot {
    tx: Outbox,
    pake_sent: bool,
    conn: u64,
    /// Held rooms: the SHA-256 of the token that takes this place back. (Digests are
    /// compared, so the comparison's timing says nothing about the token.)
    token: Option<[u8; 32]>,
}

#[derive(Debug)]
struct Room {
    /// When it was made (for the audit log's durations).
    created: Instant,
    /// The number a typed code joins by, while it can.
    number: Option<u32>,
    /// Unjoined: when it expires. Joined: when its lifetime ends.
    expires: Instant,
    /// `None` while the creator of a held room is away (`creator_away`: since when, and how
    /// its connection ended).
    creator: Option<Slot>,
    creator_away: Option<Away>,
    /// Held rooms: the digest of the creator's token (its slot goes while it is away).
    creator_token: Option<[u8; 32]>,
    /// The client that made the room (address or /64): its away rooms are capped.
    owner: std::net::IpAddr,
    joiner: Option<Slot>,
    /// Held rooms: the digest of the last joiner's token. It outlives the joiner's socket:
    /// a joiner still connected to the creator takes its place back with it (until another
    /// joiner takes the place).
    joiner_token: Option<[u8; 32]>,
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

/// How long a held room waits for its creator to take its place back (its program's own
/// wait for the other peer, `--reconnect-timeout`, is 5 minutes by default).
pub(crate) const CREATOR_AWAY_MAX: Duration = Duration::from_secs(10 * 60);

/// A held room's creator whose connection broke off and that has not taken its place back
/// within this has stopped (a live one whose socket broke reclaims within a second or two;
/// a few retries fit).
pub(crate) const CREATOR_GONE_AFTER: Duration = Duration::from_secs(15);

/// Held rooms one client may have waiting for their creator; beyond, a creator's connection
/// closing ends its room as in a room not held.
pub(crate) const MAX_AWAY_PER_CLIENT: usize = 8;

impl Room {
    fn slot(&mut self, side: Side) -> Option<&mut Slot> {
        match side {
            Side::Creator => self.creator.as_mut(),
            Side::Joiner => self.joiner.as_mut(),
        }
    }

    fn other(&mut self, side: Side) -> Option<&mut Slot> {
        match side {
            Side::Creator => self.joiner.as_mut(),
            Side::Joiner => self.creator.as_mut(),
        }
    }

    /// `m`'s connection still holds its place here.
    fn holds(&self, m: &Membership) -> bool {
        let slot = match m.side {
            Side::Creator => self.creator.as_ref(),
            Side::Joiner => self.joiner.as_ref(),
        };
        slot.is_some_and(|s| s.conn == m.conn)
    }
}

/// A token that takes a place in a held room back, and the digest the room keeps of it.
fn new_token() -> (String, [u8; 32]) {
    let token = random_id(26);
    let digest = digest(&token);
    (token, digest)
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// A held room's place: a token to hand out, and the slot keeping its digest.
fn new_slot(tx: Outbox, conn: u64, held: bool) -> (Slot, Option<String>) {
    let (token, digest) = match held {
        true => {
            let (t, d) = new_token();
            (Some(t), Some(d))
        }
        false => (None, None),
    };
    let slot = Slot {
        tx,
        pake_sent: false,
        conn,
        token: digest,
    };
    (slot, token)
}

#[derive(Debug, Default)]
struct Inner {
    rooms: HashMap<String, Room>,
    numbers: HashMap<u32, String>,
    /// Held rooms waiting for their creator, per client that made them.
    away: HashMap<std::net::IpAddr, usize>,
}

/// A room whose creator was away is back (reclaimed) or gone: its client's count drops.
fn away_ends(away: &mut HashMap<std::net::IpAddr, usize>, room: &Room) {
    if room.creator_away.is_none() {
        return;
    }
    if let Some(n) = away.get_mut(&room.owner) {
        *n -= 1;
        if *n == 0 {
            away.remove(&room.owner);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Rooms {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_lifetime: Duration,
    max_rooms: usize,
    metrics: std::sync::Arc<Metrics>,
    audit: Audit,
    next_conn: std::sync::atomic::AtomicU64,
}

/// At most one room number in this many is taken (see [`Rooms::pick_number`]).
const NUMBER_DENSITY: usize = 20;

const ROOM_ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

fn new_room_id() -> String {
    random_id(16)
}

fn random_id(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
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
            audit: Audit::off(),
            next_conn: Default::default(),
        }
    }

    /// Record joins and ends in `audit` ([`crate::audit`]).
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    fn conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
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
    /// `hold`: keep the room for its joiner (or creator) to come back (see the module
    /// invariants); the creator's token to take its place back comes with it.
    pub fn create(
        &self,
        tx: Outbox,
        owner: std::net::IpAddr,
        now: Instant,
        code: bool,
        hold: bool,
    ) -> Result<(Membership, Option<u32>, Option<String>), ErrorCode> {
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
        let conn = self.conn();
        let (creator, token) = new_slot(tx, conn, hold);
        inner.rooms.insert(
            id.clone(),
            Room {
                created: now,
                number,
                expires: now + self.ttl,
                creator_token: creator.token,
                owner: crate::limits::subscriber(owner),
                creator: Some(creator),
                creator_away: None,
                joiner: None,
                joiner_token: None,
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
                conn,
            },
            number,
            token,
        ))
    }

    /// The creator of a waiting room shows a code after all: the room's number (a new one if
    /// it had none). `None` once the room was joined (too late; not an error, as the join and
    /// the wish can cross).
    pub fn show_code(&self, m: &Membership) -> Result<Option<u32>, ErrorCode> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let room = inner.rooms.get_mut(&m.room).ok_or(ErrorCode::NoSuchRoom)?;
        if !room.holds(m) {
            return Err(ErrorCode::NotInRoom);
        }
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
    /// `reclaim`: the token of this joiner's place in a held room, which takes it back from
    /// the connection still in it. In a held room, the new place's token comes back.
    pub fn join(
        &self,
        tx: Outbox,
        which: &RoomRef,
        reclaim: Option<&str>,
        now: Instant,
    ) -> Result<(Membership, Option<String>), ErrorCode> {
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
        if room.expires <= now {
            return Err(ErrorCode::NoSuchRoom);
        }
        if room.creator.is_none() {
            let stopped = room.creator_away.is_some_and(|a| {
                a.how == Departure::BrokeOff && now >= a.since + CREATOR_GONE_AFTER
            });
            return Err(match stopped {
                true => ErrorCode::PeerGone,
                false => ErrorCode::PeerAway,
            });
        }
        if let Some(old) = &room.joiner {
            let same = reclaim.is_some_and(|t| old.token == Some(digest(t)));
            if !same {
                return Err(ErrorCode::RoomFull);
            }
            // Its own connection that has not closed yet (a network gone away): the place
            // is freed as if it had, and taken at once.
            let old = old.tx.clone();
            if !Self::free_joiner_place(room) {
                return Err(ErrorCode::Expired);
            }
            let _ = old.try_send(Outgoing::Replaced);
            if let Some(creator) = &room.creator {
                deliver(creator, ServerMessage::PeerLeft);
            }
        }
        let conn = self.conn();
        let (slot, token) = new_slot(tx, conn, room.hold.asked);
        room.joiner_token = slot.token;
        room.joiner = Some(slot);
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
        if let Some(creator) = &room.creator {
            deliver(creator, ServerMessage::PeerJoined);
        }
        counter.fetch_add(1, Ordering::Relaxed);
        self.audit.record(audit::Event::RoomJoined {
            room: audit::room(&id),
            waited_secs: audit::secs(now.saturating_duration_since(room.created)),
            rejoin: std::ptr::eq(counter, &self.metrics.rooms_rejoined),
        });
        let m = Membership {
            room: id,
            side: Side::Joiner,
            conn,
        };
        Ok((m, token))
    }

    /// A peer of a held room takes its place back with its token (from a connection that
    /// closed, or from one still there, which is closed now).
    /// The creator: `lost` says its connection to its joiner is gone too; the joiner hears
    /// `peer_lost` (come back) instead of `peer_left`. The joiner (its connection to the
    /// creator alive; `lost` is not its to say): the creator hears `peer_back`; a place
    /// another joiner took meanwhile is not given back (`room_full`).
    pub fn reclaim(
        &self,
        tx: Outbox,
        room_id: &str,
        token: &str,
        lost: bool,
        now: Instant,
    ) -> Result<Membership, ErrorCode> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let room = inner
            .rooms
            .get_mut(room_id)
            .filter(|r| r.expires > now)
            .ok_or(ErrorCode::NoSuchRoom)?;
        let token = digest(token);
        // A wrong token learns nothing about the room.
        if !room.hold.asked {
            return Err(ErrorCode::NoSuchRoom);
        }
        if room.joiner_token == Some(token) {
            let conn = self.conn();
            Self::joiner_back(room, &mut inner.numbers, tx, token, conn)?;
            self.metrics.rooms_reclaimed.fetch_add(1, Ordering::Relaxed);
            return Ok(Membership {
                room: room_id.to_string(),
                side: Side::Joiner,
                conn,
            });
        }
        if room.creator_token != Some(token) {
            return Err(ErrorCode::NoSuchRoom);
        }
        if let Some(old) = room.creator.take() {
            let _ = old.tx.try_send(Outgoing::Replaced);
        }
        away_ends(&mut inner.away, room);
        // A joiner in the middle of a key exchange with the old connection starts over; one
        // already connected learns that the creator's signalling went away and back, and
        // whether the creator lost their connection too.
        if let Some(joiner) = &mut room.joiner {
            joiner.pake_sent = false;
            let told: &[ServerMessage] = match lost {
                true => &[ServerMessage::PeerLost],
                false => &[ServerMessage::PeerLeft, ServerMessage::PeerBack],
            };
            for m in told {
                deliver(joiner, m.clone());
            }
        }
        let conn = self.conn();
        room.creator = Some(Slot {
            tx,
            // What the joiner now in the room sent to the creator's old connection is lost
            // with it: the PAKE with that joiner is over (it tries again).
            pake_sent: false,
            conn,
            token: Some(token),
        });
        room.creator_away = None;
        self.metrics.rooms_reclaimed.fetch_add(1, Ordering::Relaxed);
        Ok(Membership {
            room: room_id.to_string(),
            side: Side::Creator,
            conn,
        })
    }

    /// The joiner's half of [`Rooms::reclaim`]: its place, still held by its old socket or
    /// freed when that closed, goes to the new one.
    fn joiner_back(
        room: &mut Room,
        numbers: &mut HashMap<u32, String>,
        tx: Outbox,
        token: [u8; 32],
        conn: u64,
    ) -> Result<(), ErrorCode> {
        match &room.joiner {
            Some(old) if old.token == Some(token) => {
                let _ = old.tx.try_send(Outgoing::Replaced);
            }
            Some(_) => return Err(ErrorCode::RoomFull),
            None => {}
        }
        // A typed code's number handed back when the joiner's socket closed is retired
        // again: the joiner is in.
        if let Some(n) = room.number.take() {
            numbers.remove(&n);
        }
        room.joiner = Some(Slot {
            tx,
            // Its key exchange is long done: another message of it would be a stray.
            pake_sent: true,
            conn,
            token: Some(token),
        });
        if let Some(creator) = &room.creator {
            deliver(creator, ServerMessage::PeerBack);
        }
        Ok(())
    }

    pub fn pake(&self, m: &Membership, auth: AuthKind, msg: String) -> Result<(), ErrorCode> {
        let mut inner = self.lock();
        let room = inner.rooms.get_mut(&m.room).ok_or(ErrorCode::NoPeer)?;
        if !room.holds(m) {
            return Err(ErrorCode::NotInRoom);
        }
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
        if !room.holds(m) {
            return Err(ErrorCode::NotInRoom);
        }
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

    /// A peer gave up: the other is told and the room is gone. Except a joiner of a held
    /// room whose joiner place came free before: that may be a stranger who learnt the room
    /// id while the transfer's own joiner is away (with a wrong secret, or none at all), and
    /// the transfer must still be able to come back into the room, so it counts as that
    /// joiner leaving (its creator hears `peer_left`; comebacks and a typed code's tries stay
    /// bounded as for any joiner). The transfer's own joiner ends a running transfer over
    /// the peers' authenticated channel, not here. A first joiner's abort (a mistyped code, a
    /// cancel) still ends the room, so both sides hear it.
    pub fn abort(&self, m: &Membership, reason: AbortReason, now: Instant) {
        let stranger = {
            let mut inner = self.lock();
            let Some(room) = inner.rooms.get_mut(&m.room).filter(|r| r.holds(m)) else {
                return;
            };
            if reason == AbortReason::WrongSecret {
                self.metrics.pake_failures.fetch_add(1, Ordering::Relaxed);
            }
            let stranger = m.side == Side::Joiner && room.hold.asked && room.hold.rejoins > 0;
            if !stranger {
                self.remove(
                    &mut inner,
                    m,
                    ServerMessage::PeerAborted { reason },
                    RoomEnd::Aborted,
                );
            }
            stranger
        };
        if stranger {
            self.leave(m, now);
        }
    }

    /// A peer's connection closed (at `now`). A held room waits for it to come back: its
    /// joiner's place is freed for a rejoin, its creator's kept for a reclaim; one that can
    /// be held no more ends, and its creator is told the room is over (not just that the
    /// joiner left, which it would wait out). A connection whose place was taken leaves
    /// nothing.
    pub fn leave(&self, m: &Membership, now: Instant) {
        self.depart(m, now, Departure::Closed)
    }

    /// Like [`Rooms::leave`], saying how the connection ended.
    pub fn depart(&self, m: &Membership, now: Instant, how: Departure) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(room) = inner.rooms.get_mut(&m.room).filter(|r| r.holds(m)) else {
            return;
        };
        match (m.side, room.hold.asked) {
            (_, false) => self.remove(inner, m, ServerMessage::PeerLeft, RoomEnd::Left),
            (Side::Creator, true)
                if inner.away.get(&room.owner).copied().unwrap_or(0) >= MAX_AWAY_PER_CLIENT =>
            {
                self.remove(inner, m, ServerMessage::PeerLeft, RoomEnd::Left)
            }
            (Side::Creator, true) => {
                *inner.away.entry(room.owner).or_default() += 1;
                room.creator = None;
                room.creator_away = Some(Away { since: now, how });
                if let Some(joiner) = &mut room.joiner {
                    joiner.pake_sent = false;
                    deliver(joiner, ServerMessage::PeerLeft);
                }
            }
            (Side::Joiner, true) => {
                if !Self::free_joiner_place(room) {
                    let over = ServerMessage::Error {
                        code: ErrorCode::Expired,
                        message: "this link was used to come back too many times; send again"
                            .into(),
                    };
                    return self.remove(inner, m, over, RoomEnd::Over);
                }
                // A typed code may come back once: one more online guess at most.
                if let Some(n) = room.hold.number_used.take()
                    && !room.hold.number_returned
                    && !inner.numbers.contains_key(&n)
                {
                    room.hold.number_returned = true;
                    room.number = Some(n);
                    inner.numbers.insert(n, m.room.clone());
                }
                if let Some(creator) = &room.creator {
                    deliver(creator, ServerMessage::PeerLeft);
                }
            }
        }
    }

    /// Free a held room's joiner place for a rejoin, if the room allows one more (`false`:
    /// it allows no more).
    fn free_joiner_place(room: &mut Room) -> bool {
        if room.hold.rejoins >= MAX_REJOINS {
            return false;
        }
        room.hold.rejoins += 1;
        room.joiner = None;
        if let Some(creator) = &mut room.creator {
            creator.pake_sent = false;
        }
        true
    }

    fn remove(&self, inner: &mut Inner, m: &Membership, tell_other: ServerMessage, how: RoomEnd) {
        if let Some(mut room) = inner.rooms.remove(&m.room) {
            self.ended(&m.room, &room, how, Instant::now());
            away_ends(&mut inner.away, &room);
            if let Some(n) = room.number {
                inner.numbers.remove(&n);
            }
            if let Some(other) = room.other(m.side) {
                deliver(other, tell_other);
            }
        }
    }

    /// Close rooms whose time is up: unjoined past their `ttl`, joined past their lifetime,
    /// held ones whose creator stayed away past [`CREATOR_AWAY_MAX`] (each counted in the
    /// metrics). Returns how many went.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        let over = |r: &Room| {
            r.expires <= now
                || r.creator_away
                    .is_some_and(|a| now >= a.since + CREATOR_AWAY_MAX)
        };
        let expired: Vec<String> = inner
            .rooms
            .iter()
            .filter(|(_, r)| over(r))
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
                let how = match room.hold.joined {
                    false => RoomEnd::Expired,
                    true => RoomEnd::Over,
                };
                self.ended(id, &room, how, now);
                away_ends(&mut inner.away, &room);
                if let Some(n) = room.number {
                    inner.numbers.remove(&n);
                }
                for slot in room.creator.iter().chain(&room.joiner) {
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

    /// The server stops: every room left ends (for the audit log).
    pub fn close_all(&self, now: Instant) {
        let mut inner = self.lock();
        for (id, room) in std::mem::take(&mut inner.rooms) {
            self.ended(&id, &room, RoomEnd::Shutdown, now);
        }
        inner.numbers.clear();
        inner.away.clear();
    }

    fn ended(&self, id: &str, room: &Room, how: RoomEnd, now: Instant) {
        self.audit.record(audit::Event::RoomEnded {
            room: audit::room(id),
            how,
            joined: room.hold.joined,
            lived_secs: audit::secs(now.saturating_duration_since(room.created)),
        });
    }

    pub fn active(&self) -> usize {
        self.lock().rooms.len()
    }

    /// Whether the room `which` names is here (expired or not).
    pub fn knows(&self, which: &RoomRef) -> bool {
        let inner = self.lock();
        match which {
            RoomRef::Id(id) => inner.rooms.contains_key(id),
            RoomRef::Number(n) => inner.numbers.contains_key(n),
        }
    }

    /// The longest a room can still live: what its record elsewhere must outlive.
    pub fn longest_life(&self) -> Duration {
        self.ttl + self.max_lifetime
    }

    /// Another node has the number of `m`'s room: it gets a new one (`None` if the room has
    /// none, or no other number is free; it then keeps its own).
    pub fn renumber(&self, m: &Membership) -> Option<u32> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let old = inner.rooms.get(&m.room)?.number?;
        // The old number is still taken while picking, so the new one differs.
        let n = Self::pick_number(inner)?;
        inner.numbers.remove(&old);
        inner.numbers.insert(n, m.room.clone());
        inner.rooms.get_mut(&m.room)?.number = Some(n);
        Some(n)
    }

    /// Every room here with its number and how long it may still wait unjoined: what a
    /// node records again in a Redis that came back empty.
    pub fn records(&self, now: Instant) -> Vec<(String, Option<u32>, Duration)> {
        self.lock()
            .rooms
            .iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    r.number,
                    r.expires.saturating_duration_since(now),
                )
            })
            .collect()
    }

    /// Rooms with a peer connected (held rooms waiting for both peers to come back are not).
    pub fn occupied(&self) -> usize {
        self.lock()
            .rooms
            .values()
            .filter(|r| r.creator.is_some() || r.joiner.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(1800);
    const LIFETIME: Duration = Duration::from_secs(7200);
    const ME: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn rooms() -> Rooms {
        Rooms::new(TTL, LIFETIME, 100, Default::default())
    }

    fn outbox() -> (Outbox, mpsc::Receiver<Outgoing>) {
        mpsc::channel(16)
    }

    fn next(rx: &mut mpsc::Receiver<Outgoing>) -> Option<ServerMessage> {
        match rx.try_recv().ok()? {
            Outgoing::Msg(m) | Outgoing::Final(m) => Some(m),
            Outgoing::Replaced => panic!("replaced where a message was expected"),
            Outgoing::Detached(_) => panic!("rooms never detach a connection"),
        }
    }

    /// Everything queued for a connection was read, and the last of it closes it as replaced.
    fn replaced(rx: &mut mpsc::Receiver<Outgoing>) -> bool {
        let mut last = None;
        while let Ok(o) = rx.try_recv() {
            last = Some(o);
        }
        matches!(last, Some(Outgoing::Replaced))
    }

    /// One peer in a room: its place, its token, what the server tells it.
    type Seat = (Membership, String, mpsc::Receiver<Outgoing>);

    /// A held room with its creator and a joiner in it, and the tokens they were given.
    fn held_and_joined(r: &Rooms, t0: Instant) -> (Seat, Seat) {
        let (tx, mut creator) = outbox();
        let (m, _, token) = r.create(tx, ME, t0, false, true).unwrap();
        let (jtx, joiner) = outbox();
        let (j, jtoken) = r.join(jtx, &RoomRef::Id(m.room.clone()), None, t0).unwrap();
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        let token = token.expect("a held room's creator gets a token");
        let jtoken = jtoken.expect("a held room's joiner gets a token");
        assert_ne!(token, jtoken);
        ((m, token, creator), (j, jtoken, joiner))
    }

    #[test]
    fn only_a_held_room_hands_out_tokens() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, _c) = outbox();
        let (m, _, token) = r.create(tx, ME, t0, false, false).unwrap();
        assert_eq!(token, None);
        let (jtx, _j) = outbox();
        let (_, jtoken) = r.join(jtx, &RoomRef::Id(m.room), None, t0).unwrap();
        assert_eq!(jtoken, None);
    }

    #[test]
    fn a_held_rooms_creator_takes_its_place_back_with_its_token() {
        let r = rooms();
        let t0 = Instant::now();
        let ((m, token, _old), (j, _, mut joiner)) = held_and_joined(&r, t0);
        let id = RoomRef::Id(m.room.clone());
        // Its connection closes: the joiner is told, the room stays.
        r.leave(&m, t0);
        assert_eq!(next(&mut joiner), Some(ServerMessage::PeerLeft));
        assert_eq!(r.active(), 1);
        assert_eq!(
            r.sealed(&j, "eA==".into()).unwrap_err(),
            ErrorCode::NoPeer,
            "no one to forward to meanwhile"
        );
        // The joiner's own connection goes too; coming back meanwhile is `peer_away`.
        r.leave(&j, t0);
        let (x, _) = outbox();
        assert_eq!(r.join(x, &id, None, t0).unwrap_err(), ErrorCode::PeerAway);
        // A wrong token learns nothing; the right one takes the place back.
        let (ctx, mut creator) = outbox();
        assert_eq!(
            r.reclaim(ctx.clone(), &m.room, "not-the-token", false, t0)
                .unwrap_err(),
            ErrorCode::NoSuchRoom
        );
        assert_eq!(
            r.reclaim(ctx.clone(), "nosuchroom", &token, false, t0)
                .unwrap_err(),
            ErrorCode::NoSuchRoom
        );
        let back = r.reclaim(ctx, &m.room, &token, false, t0).unwrap();
        assert_eq!(r.metrics.rooms_reclaimed.load(Ordering::Relaxed), 1);
        // The old place acts no more; the new one is the creator, and a joiner meets it.
        assert_eq!(
            r.sealed(&m, "eA==".into()).unwrap_err(),
            ErrorCode::NotInRoom
        );
        let (jtx, mut joiner) = outbox();
        let (j, _) = r.join(jtx, &id, None, t0).unwrap();
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        r.pake(&back, AuthKind::Link, "YQ==".into()).unwrap();
        assert!(matches!(
            next(&mut joiner),
            Some(ServerMessage::Pake { .. })
        ));
        r.sealed(&j, "eQ==".into()).unwrap();
        assert_eq!(
            next(&mut creator),
            Some(ServerMessage::Sealed {
                data: "eQ==".into()
            })
        );
        // The old connection closing late (or aborting) touches nothing.
        r.leave(&m, t0);
        r.abort(&m, AbortReason::Failed, t0);
        assert_eq!(r.active(), 1);
        assert_eq!(next(&mut creator), None);
    }

    #[test]
    fn a_reclaim_closes_the_creators_connection_still_in_its_place() {
        let r = rooms();
        let t0 = Instant::now();
        let ((m, token, mut old), (j, _, mut joiner)) = held_and_joined(&r, t0);
        let (ctx, mut creator) = outbox();
        r.reclaim(ctx, &m.room, &token, false, t0).unwrap();
        assert!(replaced(&mut old), "the old connection is told to close");
        // The joiner learns that the creator's signalling went and came back.
        assert_eq!(next(&mut joiner), Some(ServerMessage::PeerLeft));
        assert_eq!(next(&mut joiner), Some(ServerMessage::PeerBack));
        r.leave(&m, t0);
        r.sealed(&j, "eQ==".into()).unwrap();
        assert_eq!(
            next(&mut creator),
            Some(ServerMessage::Sealed {
                data: "eQ==".into()
            })
        );
        // The token stays the creator's: another reclaim later works the same. A creator
        // whose connection to the joiner went too says so, and the joiner hears it.
        let (ctx, _again) = outbox();
        r.reclaim(ctx, &m.room, &token, true, t0).unwrap();
        assert!(replaced(&mut creator));
        assert_eq!(next(&mut joiner), Some(ServerMessage::PeerLost));
    }

    #[test]
    fn a_joiner_with_its_token_takes_its_place_back_at_once() {
        let r = rooms();
        let t0 = Instant::now();
        let ((m, _, mut creator), (j, jtoken, mut old)) = held_and_joined(&r, t0);
        let id = RoomRef::Id(m.room.clone());
        let (x, _) = outbox();
        assert_eq!(
            r.join(x.clone(), &id, None, t0).unwrap_err(),
            ErrorCode::RoomFull
        );
        assert_eq!(
            r.join(x, &id, Some("not-the-token"), t0).unwrap_err(),
            ErrorCode::RoomFull
        );
        let (jtx, mut joiner) = outbox();
        let (back, fresh) = r.join(jtx, &id, Some(&jtoken), t0).unwrap();
        assert!(
            fresh.is_some_and(|t| t != jtoken),
            "a new place, a new token"
        );
        assert!(replaced(&mut old));
        // As if the old connection had closed, and the joiner came in again.
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerLeft));
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        assert_eq!(r.metrics.rooms_rejoined.load(Ordering::Relaxed), 1);
        // The old connection closing late does not free the new one's place.
        r.leave(&j, t0);
        assert_eq!(next(&mut creator), None);
        r.pake(&m, AuthKind::Link, "YQ==".into()).unwrap();
        assert!(matches!(
            next(&mut joiner),
            Some(ServerMessage::Pake { .. })
        ));
        r.sealed(&back, "eQ==".into()).unwrap();
        assert!(matches!(
            next(&mut creator),
            Some(ServerMessage::Sealed { .. })
        ));
    }

    #[test]
    fn a_connected_joiner_takes_its_place_back_quietly_with_its_token() {
        let r = rooms();
        let t0 = Instant::now();
        let ((m, _, mut creator), (j, jtoken, mut old)) = held_and_joined(&r, t0);
        // While its old socket is still counted in the room: that one is closed, the
        // creator hears the joiner is back, and signals flow to the new socket.
        let (jtx, mut joiner) = outbox();
        let back = r.reclaim(jtx, &m.room, &jtoken, false, t0).unwrap();
        assert!(replaced(&mut old));
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerBack));
        r.sealed(&m, "eQ==".into()).unwrap();
        assert!(matches!(
            next(&mut joiner),
            Some(ServerMessage::Sealed { .. })
        ));
        r.leave(&j, t0);
        assert_eq!(next(&mut creator), None, "the old socket closing late");
        // Its new socket closes too (the server noticed first): the place is freed as for
        // any joiner; the same token takes it back, without a new key exchange.
        r.leave(&back, t0);
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerLeft));
        let (jtx, mut joiner) = outbox();
        let again = r.reclaim(jtx, &m.room, &jtoken, false, t0).unwrap();
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerBack));
        assert_eq!(
            r.pake(&again, AuthKind::Link, "YQ==".into()).unwrap_err(),
            ErrorCode::PakeAlreadySent
        );
        r.sealed(&again, "eQ==".into()).unwrap();
        assert!(matches!(
            next(&mut creator),
            Some(ServerMessage::Sealed { .. })
        ));
        r.sealed(&m, "eQ==".into()).unwrap();
        assert!(matches!(
            next(&mut joiner),
            Some(ServerMessage::Sealed { .. })
        ));
        // Once another joiner took the place (its socket gone, a new join with the
        // secret), the old token brings nothing back.
        r.leave(&again, t0);
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerLeft));
        let (ntx, _n) = outbox();
        r.join(ntx, &RoomRef::Id(m.room.clone()), None, t0).unwrap();
        let (jtx, _) = outbox();
        assert_eq!(
            r.reclaim(jtx, &m.room, &jtoken, false, t0).unwrap_err(),
            ErrorCode::NoSuchRoom
        );
    }

    #[test]
    fn a_client_has_only_so_many_rooms_waiting_for_it() {
        let r = rooms();
        let t0 = Instant::now();
        let mut held = Vec::new();
        for _ in 0..=MAX_AWAY_PER_CLIENT {
            let (tx, rx) = outbox();
            let (m, _, token) = r.create(tx, ME, t0, false, true).unwrap();
            held.push((m, token.unwrap(), rx));
        }
        // Its creators' connections close: up to the cap the rooms wait, the next one ends.
        for (m, _, _) in &held {
            r.leave(m, t0);
        }
        assert_eq!(r.active(), MAX_AWAY_PER_CLIENT);
        // Another client's room is not counted against it.
        let (tx, _c) = outbox();
        let other = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
        let (m, _, _) = r.create(tx, other, t0, false, true).unwrap();
        r.leave(&m, t0);
        assert_eq!(r.active(), MAX_AWAY_PER_CLIENT + 1);
        // A room taken back frees its count: the next one to close waits again.
        let (m0, token0, _) = &held[0];
        let (tx, _back) = outbox();
        let back = r.reclaim(tx, &m0.room, token0, false, t0).unwrap();
        let (tx, _c) = outbox();
        let (m, _, _) = r.create(tx, ME, t0, false, true).unwrap();
        r.leave(&m, t0);
        assert_eq!(r.active(), MAX_AWAY_PER_CLIENT + 2);
        // Swept rooms free theirs too.
        assert_eq!(r.sweep(t0 + CREATOR_AWAY_MAX), MAX_AWAY_PER_CLIENT + 1);
        assert!(r.lock().away.is_empty(), "{:?}", r.lock().away);
        let _ = back;
    }

    /// A creator whose connection broke off (no close frame: a killed program) and that is
    /// not back in time has stopped: joins are refused with `peer_gone`, and the room waits
    /// on. One that closed on purpose or went silent may be alive: joins are told to try
    /// again until `CREATOR_AWAY_MAX`.
    #[test]
    fn a_creator_that_broke_off_and_stays_away_has_stopped() {
        let r = rooms();
        let t0 = Instant::now();
        let ((m, token, _), (_, jtoken, _)) = held_and_joined(&r, t0);
        r.depart(&m, t0, Departure::BrokeOff);
        let id = RoomRef::Id(m.room.clone());
        let (x, _) = outbox();
        let back = |at| {
            r.join(x.clone(), &id, Some(&jtoken), at)
                .map(|_| ())
                .unwrap_err()
        };
        assert_eq!(back(t0 + Duration::from_secs(1)), ErrorCode::PeerAway);
        assert_eq!(back(t0 + CREATOR_GONE_AFTER), ErrorCode::PeerGone);
        assert_eq!(back(t0 + CREATOR_GONE_AFTER), ErrorCode::PeerGone);
        // The room waits on: a creator alive after all takes it back.
        let (c, _c) = outbox();
        r.reclaim(c, &m.room, &token, false, t0 + CREATOR_GONE_AFTER)
            .unwrap();

        for how in [Departure::Closed, Departure::Silent] {
            let ((m, _, _), (_, jtoken, _)) = held_and_joined(&r, t0);
            r.depart(&m, t0, how);
            let id = RoomRef::Id(m.room.clone());
            let (x, _) = outbox();
            assert_eq!(
                r.join(x, &id, Some(&jtoken), t0 + CREATOR_GONE_AFTER)
                    .map(|_| ())
                    .unwrap_err(),
                ErrorCode::PeerAway,
                "{how:?}"
            );
        }
        // A creator back in time clears it.
        let ((m2, token2, _), (_, jtoken2, _)) = held_and_joined(&r, t0);
        r.depart(&m2, t0, Departure::BrokeOff);
        let (c, _c) = outbox();
        r.reclaim(c, &m2.room, &token2, false, t0 + Duration::from_secs(1))
            .unwrap();
        let (x2, _) = outbox();
        let at = t0 + CREATOR_GONE_AFTER;
        assert!(
            r.join(x2, &RoomRef::Id(m2.room.clone()), Some(&jtoken2), at)
                .is_ok(),
            "the joiner gets its place back"
        );
    }

    #[test]
    fn a_creator_away_too_long_ends_its_room() {
        let r = rooms();
        let t0 = Instant::now();
        let ((m, token, _), (_, _, mut joiner)) = held_and_joined(&r, t0);
        r.leave(&m, t0);
        assert_eq!(next(&mut joiner), Some(ServerMessage::PeerLeft));
        assert_eq!(r.sweep(t0 + CREATOR_AWAY_MAX - Duration::from_millis(1)), 0);
        assert_eq!(r.sweep(t0 + CREATOR_AWAY_MAX), 1);
        assert_eq!(
            next(&mut joiner),
            Some(ServerMessage::Error {
                code: ErrorCode::Expired,
                message: ErrorCode::Expired.explain().into()
            })
        );
        let (ctx, _) = outbox();
        assert_eq!(
            r.reclaim(ctx, &m.room, &token, false, t0 + CREATOR_AWAY_MAX)
                .unwrap_err(),
            ErrorCode::NoSuchRoom
        );
    }

    #[test]
    fn an_unjoined_room_expires_on_time_and_not_before() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, mut creator) = outbox();
        let (m, number, _) = r.create(tx, ME, t0, true, false).unwrap();
        let number = number.unwrap();
        assert_eq!(r.sweep(t0 + TTL - Duration::from_millis(1)), 0);
        // At the deadline it is gone for joiners, by id and by number, before any sweep.
        let (j, _) = outbox();
        assert_eq!(
            r.join(j.clone(), &RoomRef::Id(m.room.clone()), None, t0 + TTL)
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
            r.join(j, &RoomRef::Number(number), None, t0 + TTL)
                .unwrap_err(),
            ErrorCode::NoSuchRoom
        );
        assert_eq!(r.active(), 0);
    }

    #[test]
    fn a_joined_room_outlives_its_ttl_then_ends_at_its_lifetime() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, mut creator) = outbox();
        let (m, number, _) = r.create(tx, ME, t0, true, false).unwrap();
        let number = number.unwrap();
        let (jtx, mut joiner) = outbox();
        let joined = t0 + TTL / 2;
        let j = r
            .join(jtx, &RoomRef::Number(number), None, joined)
            .unwrap()
            .0;
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
            r.join(x, &RoomRef::Number(number), None, t0 + TTL)
                .unwrap_err(),
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
        let (m, _, _) = r.create(tx, ME, t0, true, false).unwrap();
        let (jtx, _joiner) = outbox();
        let j = r
            .join(jtx, &RoomRef::Id(m.room.clone()), None, t0)
            .unwrap()
            .0;
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        r.to_other(&j, ServerMessage::PeerLeft);
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerLeft));
    }

    /// Another node has a room's number: the room takes a new one, joinable by it, and the
    /// old one no longer leads there.
    #[test]
    fn a_room_renumbered_is_joined_by_its_new_number_only() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, _rx) = outbox();
        let (m, old, _) = r.create(tx, ME, t0, true, false).unwrap();
        let old = old.unwrap();
        let new = r.renumber(&m).unwrap();
        assert_ne!(new, old);
        assert!(r.knows(&RoomRef::Number(new)) && !r.knows(&RoomRef::Number(old)));
        assert!(r.knows(&RoomRef::Id(m.room.clone())));
        assert_eq!(r.records(t0), vec![(m.room.clone(), Some(new), TTL)]);
        let (jtx, _jrx) = outbox();
        assert!(matches!(
            r.join(jtx.clone(), &RoomRef::Number(old), None, t0),
            Err(ErrorCode::NoSuchRoom)
        ));
        assert_eq!(
            r.join(jtx, &RoomRef::Number(new), None, t0).unwrap().0.room,
            m.room
        );
        // A room without a number is not given one.
        let (tx, _rx) = outbox();
        let (m, _, _) = r.create(tx, ME, t0, false, false).unwrap();
        assert_eq!(r.renumber(&m), None);
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
            numbers.push(r.create(tx, ME, t0, true, false).unwrap().1.unwrap());
        }
        // 3 digits while at most one number in NUMBER_DENSITY is taken, then up to 4.
        let three = 999 / NUMBER_DENSITY;
        assert!(numbers[..three].iter().all(|&n| n <= 999), "{numbers:?}");
        assert!(numbers[three..].iter().all(|&n| n <= 9_999), "{numbers:?}");
        assert!(numbers[three..].iter().any(|&n| n > 999), "{numbers:?}");
        // A room whose creator shows no code takes no number.
        let (tx, _rx) = outbox();
        assert_eq!(r.create(tx, ME, t0, false, false).unwrap().1, None);
    }

    #[test]
    fn a_held_room_waits_for_its_joiner_to_come_back_with_a_fresh_key_exchange() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, mut creator) = outbox();
        let (m, _, _) = r.create(tx, ME, t0, false, true).unwrap();
        let id = RoomRef::Id(m.room.clone());
        let (jtx, _joiner) = outbox();
        let j = r.join(jtx, &id, None, t0).unwrap().0;
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        r.pake(&m, AuthKind::Link, "YQ==".into()).unwrap();
        r.pake(&j, AuthKind::Link, "Yg==".into()).unwrap();
        assert!(matches!(
            next(&mut creator),
            Some(ServerMessage::Pake { .. })
        ));
        r.leave(&j, t0);
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerLeft));
        assert_eq!(r.active(), 1, "the room waits");
        // The one who comes back runs the key exchange again, and so does the creator.
        let (jtx, mut joiner) = outbox();
        let later = t0 + LIFETIME / 2;
        let j = r.join(jtx, &id, None, later).unwrap().0;
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
        assert_eq!(
            r.join(x, &id, None, later).unwrap_err(),
            ErrorCode::RoomFull
        );
        // Coming back does not extend the room's life.
        assert_eq!(r.sweep(t0 + LIFETIME), 1);
        let _ = j;
    }

    #[test]
    fn a_joiner_with_the_wrong_secret_does_not_end_a_held_room() {
        let r = rooms();
        let t0 = Instant::now();
        let ((m, _, mut creator), (j, _, _)) = held_and_joined(&r, t0);
        r.leave(&j, t0);
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerLeft));
        // Someone with the room id but not the secret joins and fails the key confirmation.
        let (x, _stranger) = outbox();
        let (s, _) = r.join(x, &RoomRef::Id(m.room.clone()), None, t0).unwrap();
        r.abort(&s, AbortReason::WrongSecret, t0);
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerLeft));
        assert_eq!(r.active(), 1, "the room waits on");
        // The real joiner still gets back in.
        let (y, _back) = outbox();
        r.join(y, &RoomRef::Id(m.room.clone()), None, t0).unwrap();
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        // A first joiner's wrong secret ends the room, held or not, as before: both sides
        // hear it.
        for hold in [true, false] {
            let (tx, mut creator) = outbox();
            let (m, _, _) = r.create(tx, ME, t0, false, hold).unwrap();
            let (jtx, _j) = outbox();
            let (j, _) = r.join(jtx, &RoomRef::Id(m.room.clone()), None, t0).unwrap();
            r.abort(&j, AbortReason::WrongSecret, t0);
            assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
            assert_eq!(
                next(&mut creator),
                Some(ServerMessage::PeerAborted {
                    reason: AbortReason::WrongSecret
                })
            );
        }
        assert_eq!(r.active(), 1, "only the first room waits on");
    }

    #[test]
    fn a_held_room_comes_back_a_bounded_number_of_times_and_never_after_an_abort() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, mut creator) = outbox();
        let (m, _, _) = r.create(tx, ME, t0, false, true).unwrap();
        let id = RoomRef::Id(m.room.clone());
        // The creator reads what it is told as it comes (its queue is bounded).
        let mut told = Vec::new();
        for _ in 0..MAX_REJOINS {
            let (jtx, _j) = outbox();
            let j = r.join(jtx, &id, None, t0).unwrap().0;
            r.leave(&j, t0);
            while let Some(m) = next(&mut creator) {
                told.push(m);
            }
        }
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &id, None, t0).unwrap().0;
        r.leave(&j, t0);
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
        let (m, _, _) = r.create(tx, ME, t0, false, true).unwrap();
        let (jtx, _j) = outbox();
        let j = r
            .join(jtx, &RoomRef::Id(m.room.clone()), None, t0)
            .unwrap()
            .0;
        r.abort(&j, AbortReason::Cancelled, t0);
        assert_eq!(next(&mut creator), Some(ServerMessage::PeerJoined));
        assert_eq!(
            next(&mut creator),
            Some(ServerMessage::PeerAborted {
                reason: AbortReason::Cancelled
            })
        );
        assert_eq!(r.active(), 0, "an abort ends a held room");

        // Without hold, a leave ends the room as before.
        let (tx, _c) = outbox();
        let (m, _, _) = r.create(tx, ME, t0, false, false).unwrap();
        let (jtx, _j) = outbox();
        let j = r
            .join(jtx, &RoomRef::Id(m.room.clone()), None, t0)
            .unwrap()
            .0;
        r.leave(&j, t0);
        assert_eq!(r.active(), 0);
    }

    #[test]
    fn a_typed_code_gets_its_held_room_back_once_only() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, _creator) = outbox();
        let (m, number, _) = r.create(tx, ME, t0, true, true).unwrap();
        let number = RoomRef::Number(number.unwrap());
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &number, None, t0).unwrap().0;
        r.leave(&j, t0);
        // Once more by number…
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &number, None, t0).unwrap().0;
        r.leave(&j, t0);
        // …then only the link (whose secret no one guesses) joins it.
        let (x, _) = outbox();
        assert_eq!(
            r.join(x, &number, None, t0).unwrap_err(),
            ErrorCode::NoSuchRoom
        );
        let (jtx, _j) = outbox();
        r.join(jtx, &RoomRef::Id(m.room.clone()), None, t0).unwrap();

        // A joiner who used the link does not bring the number back.
        let (tx, _creator) = outbox();
        let (m, n, _) = r.create(tx, ME, t0, true, true).unwrap();
        let (jtx, _j) = outbox();
        let j = r
            .join(jtx, &RoomRef::Id(m.room.clone()), None, t0)
            .unwrap()
            .0;
        r.leave(&j, t0);
        let (x, _) = outbox();
        assert_eq!(
            r.join(x, &RoomRef::Number(n.unwrap()), None, t0)
                .unwrap_err(),
            ErrorCode::NoSuchRoom
        );
    }

    #[test]
    fn a_typed_code_is_tried_at_most_twice_in_a_room_however_its_joiners_come() {
        let r = rooms();
        let t0 = Instant::now();
        let (tx, _creator) = outbox();
        let (m, number, _) = r.create(tx, ME, t0, true, true).unwrap();
        let id = RoomRef::Id(m.room.clone());
        let (jtx, _j) = outbox();
        let j = r
            .join(jtx, &RoomRef::Number(number.unwrap()), None, t0)
            .unwrap()
            .0;
        r.pake(&j, AuthKind::Code, "YQ==".into()).unwrap();
        r.leave(&j, t0);
        // Back by the room id (learnt from `joined`), with the code's password again.
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &id, None, t0).unwrap().0;
        r.pake(&j, AuthKind::Code, "Yg==".into()).unwrap();
        r.leave(&j, t0);
        let (jtx, _j) = outbox();
        let j = r.join(jtx, &id, None, t0).unwrap().0;
        assert_eq!(
            r.pake(&j, AuthKind::Code, "Yw==".into()).unwrap_err(),
            ErrorCode::PakeAlreadySent
        );
        // The link's long secret is no guess: it may come back.
        r.pake(&j, AuthKind::Link, "ZA==".into()).unwrap();
    }
}
