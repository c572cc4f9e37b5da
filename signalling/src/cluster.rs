//! Nodes of one deployment sharing rooms through Redis (`--redis URL`).
//!
//! A room lives on the node where it was created: its [`crate::rooms::Rooms`] entry, its
//! timers and its forwarding stay there, as without Redis. Redis holds only what the other
//! nodes need to find it, and carries their messages:
//!
//! ```text
//!  pd:room:<id>   → the room's node     (SET … EX the room's longest life)
//!  pd:num:<n>     → the room's id       (SET … NX EX the room's ttl: numbers are unique
//!                                        across the deployment)
//!  pd:alive:<node>                      (SET … EX 10, renewed every 3 s)
//!  pd:lim:<client>:<minute>             (INCR: rooms created or joined, shared limit)
//!  pd:node:<node> (pub/sub channel)     [`Envelope`]s for that node
//!  pd:inbox:<id>  → {node, sealed name} (HSET … EXPIRE 15 s, renewed every 3 s while its
//!                                        node has it)
//!  pd:relay:<id>  → a listed volunteer  (SET … EX 20 s, renewed by its reports; ids in the
//!                                        set pd:relays)
//! ```
//!
//! A `knock` for an inbox registered through another node is proxied the same way: the
//! drop's room is made on the inbox's node.
//!
//! A client whose `join` or `reclaim` names a room of another node is *proxied*: its node
//! keeps the socket, the limits and the pings, and forwards every message it reads to the
//! room's node; the room's node runs that client as a *remote connection* (the same request
//! handling as a socket of its own) and publishes what it has for the client back.
//!
//! Invariants:
//! - Without `--redis` none of this exists and nothing changes.
//! - Every Redis operation has [`REDIS_TIMEOUT`]; a request that needs Redis and cannot have
//!   it is refused with `shutting_down` ("try again in a minute"), never left hanging.
//! - A node that dies loses only its own sockets: a room's node whose remote client's node
//!   is no longer alive lets that client go (the other peer hears `peer_left`); a proxied
//!   client whose room's node died is told `peer_left` and closed (its room is gone). A node
//!   is dead when its liveness key stayed missing for [`DEAD_AFTER_MISSING`], not at once:
//!   a Redis restarted empty has lost every node's key for a moment.
//! - A client's departure reaches its room's node by a `gone` (sent again for a few seconds
//!   while nobody hears it) and, should that be lost, by the list of clients its node sends
//!   every [`LIVENESS_CHECK`]: a client no longer listed is gone. Silence proves nothing (Redis
//!   may be away), so nothing ends for want of a list.
//! - When Redis comes back empty (restarted without persistence), each node records its
//!   rooms and numbers again at its next heartbeat (it finds its own liveness key gone), and
//!   subscribes again if its channel has no subscriber (a subscription can die unnoticed).
//! - Messages are the protocol's own JSON inside the envelope; nothing here reads sealed
//!   payloads, and nothing here is logged with a room id or an address.

use futures::StreamExt as _;
use protocol::inbox::InboxId;
use protocol::signal::{ClientMessage, ErrorCode, RoomRef, ServerMessage};
use rand::Rng as _;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::rooms::{Departure, Outbox, Outgoing};

/// The longest any one Redis operation may take before the request is refused.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// A node renews its liveness key this often…
const HEARTBEAT: Duration = Duration::from_secs(3);
/// …and is dead to the others once it has not for this long.
const ALIVE_FOR: Duration = Duration::from_secs(10);
/// How often a room's node checks its remote clients' nodes (and a proxied client its
/// room's node) are alive.
pub(crate) const LIVENESS_CHECK: Duration = Duration::from_secs(3);
/// A node whose liveness key is missing is dead only when it stayed missing this long: after
/// Redis restarted empty, live nodes write theirs again within a [`HEARTBEAT`].
const DEAD_AFTER_MISSING: Duration = Duration::from_secs(5);
/// The shared room limit: the estimate over the sliding minute (this minute's count, and the
/// last one's weighted by ARGV[1]) must stay under ARGV[2]; only an allowed room counts, so a
/// client refused in a loop is not kept out for ever.
const ROOM_LIMIT_SCRIPT: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local before = tonumber(redis.call('GET', KEYS[2]) or '0')
if n + before * tonumber(ARGV[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 120)
return 1
";
/// A node keeps sending its list of clients to a node this long after it last carried a
/// client there.
const LIST_AFTER_LAST: Duration = Duration::from_secs(600);
/// A subscription that broke is made again after this.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
    #[error("a cluster message could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<ClusterError> for ErrorCode {
    /// What a client is told when Redis cannot be had: the deployment is not itself, try
    /// again shortly.
    fn from(_: ClusterError) -> Self {
        ErrorCode::ShuttingDown
    }
}

/// A message between nodes, published on the receiving node's channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Envelope {
    /// To a room's node: a message from client `conn` of `node`.
    Client {
        node: String,
        conn: u64,
        ip: IpAddr,
        msg: ClientMessage,
    },
    /// To a room's node: client `conn` of `node` is gone.
    Gone {
        node: String,
        conn: u64,
        how: Departure,
    },
    /// To a client's node: what the room's node has for client `conn`.
    Server { conn: u64, out: Outgoing },
    /// To a room's node, every [`LIVENESS_CHECK`]: the clients `node` still has in rooms
    /// there. One it no longer lists is gone (a `gone` that was lost, its node restarted).
    Clients { node: String, conns: Vec<u64> },
}

/// The client's node said it is gone, and how (kept apart from the message queue, so a full
/// queue cannot lose it).
pub(crate) type GoneSignal = tokio::sync::watch::Receiver<Option<Departure>>;

/// A remote connection the room's node runs for another node's client.
#[derive(Debug)]
pub(crate) struct RemoteClient {
    pub node: String,
    pub conn: u64,
    pub ip: IpAddr,
    pub first: ClientMessage,
    /// Its messages, in order.
    pub inbound: mpsc::Receiver<ClientMessage>,
    pub gone: GoneSignal,
}

/// What [`Cluster::receive`] leaves to do.
#[derive(Debug)]
pub(crate) enum Received {
    Client(RemoteClient),
    Stray { node: String, conn: u64 },
}

/// A proxied client's room, on another node.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub node: String,
    pub conn: u64,
}

/// This node's view of the deployment.
pub(crate) struct Cluster {
    node: String,
    redis: redis::aio::ConnectionManager,
    client: redis::Client,
    /// This node's clients whose room is on another node, by their conn id: their outbox
    /// and that node.
    proxied: Mutex<HashMap<u64, (Outbox, String)>>,
    /// Nodes this node's clients were carried to lately: they keep getting its list of
    /// clients (empty once they all left), so a lost `gone` is made up for.
    listed_to: Mutex<HashMap<String, Instant>>,
    /// Other nodes' clients in rooms here.
    remote: Mutex<HashMap<(String, u64), RemoteEntry>>,
    next_conn: AtomicU64,
    /// Liveness answers, reused for a second, and since when each node's key has been seen
    /// missing (a node is dead only once it stayed missing for [`DEAD_AFTER_MISSING`]).
    alive: Mutex<HashMap<String, (Instant, Option<Instant>)>>,
    rooms_per_min: u32,
}

#[derive(Debug)]
struct RemoteEntry {
    tx: mpsc::Sender<ClientMessage>,
    gone: tokio::sync::watch::Sender<Option<Departure>>,
    since: Instant,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish()
    }
}

async fn timed<T>(
    f: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClusterError::Timeout),
    }
}

/// How long an inbox's record lasts unless its node records it again (every
/// [`HEARTBEAT`]): a dead node's inboxes vanish by themselves.
pub(crate) const INBOX_TTL: Duration = Duration::from_secs(15);

/// Delete an inbox's record only if this node still has it (the inbox may have registered
/// through another node since).
const RELEASE_INBOX_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A volunteer relay listed on some node: its id (its secret derives from it), URLs and
/// latest load ([`crate::volunteers`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SharedRelay {
    pub id: String,
    pub node: String,
    pub urls: Vec<String>,
    pub allocations: u64,
    pub relayed: u64,
}

/// The set of relay ids, each with its record `pd:relay:<id>` (which expires as the relay's
/// reports stop; the set is cleaned as records are found gone).
const RELAYS_KEY: &str = "pd:relays";

fn relay_key(id: &str) -> String {
    format!("pd:relay:{id}")
}
/// Renew an inbox's record if it is this node's: 1 kept, 0 missing, -1 another node's.
const RENEW_INBOX_SCRIPT: &str = r"
local node = redis.call('HGET', KEYS[1], 'node')
if node == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
elseif node then
  return -1
end
return 0
";

/// What renewing an inbox's record found ([`Cluster::renew_inboxes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    Kept,
    Missing,
    Elsewhere,
}

fn inbox_key(id: &str) -> String {
    format!("pd:inbox:{id}")
}
fn room_key(id: &str) -> String {
    format!("pd:room:{id}")
}
fn number_key(n: u32) -> String {
    format!("pd:num:{n}")
}
fn alive_key(node: &str) -> String {
    format!("pd:alive:{node}")
}
fn channel(node: &str) -> String {
    format!("pd:node:{node}")
}

impl Cluster {
    /// Connect to Redis at `url` (the server does not start without it).
    pub async fn connect(url: &str, rooms_per_min: u32) -> Result<Self, ClusterError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let redis = timed(redis::aio::ConnectionManager::new_with_config(
            client.clone(),
            config,
        ))
        .await?;
        let node: String = {
            let mut rng = rand::thread_rng();
            (0..12)
                .map(|_| char::from(b"abcdefghijkmnpqrstuvwxyz23456789"[rng.gen_range(0..32)]))
                .collect()
        };
        let cluster = Self {
            node,
            redis,
            client,
            proxied: Mutex::default(),
            listed_to: Mutex::default(),
            remote: Mutex::default(),
            next_conn: AtomicU64::new(1),
            alive: Mutex::default(),
            rooms_per_min,
        };
        cluster.heartbeat().await?;
        Ok(cluster)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn conn(&self) -> redis::aio::ConnectionManager {
        self.redis.clone()
    }

    /// Say this node is alive for [`ALIVE_FOR`].
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        self.beat().await.map(|_| ())
    }

    /// [`Cluster::heartbeat`], learning what Redis still has of this node: whether its
    /// liveness key was there (gone: Redis restarted empty, or this node was away longer
    /// than [`ALIVE_FOR`], and its rooms must be recorded again), and whether its channel
    /// still has a subscriber (none: the subscription died without a word).
    async fn beat(&self) -> Result<Beat, ClusterError> {
        let mut c = self.conn();
        let opts = redis::SetOptions::default()
            .get(true)
            .with_expiration(redis::SetExpiry::EX(ALIVE_FOR.as_secs()));
        let was: Option<String> = timed(c.set_options(alive_key(&self.node), 1, opts)).await?;
        let (_, subscribers): (String, u64) = timed(
            redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel(&self.node))
                .query_async(&mut c),
        )
        .await?;
        Ok(Beat {
            records_kept: was.is_some(),
            subscribed: subscribers > 0,
        })
    }

    /// Whether `node` renewed its liveness lately. Dead only when its key has been missing
    /// for [`DEAD_AFTER_MISSING`] (Redis restarted empty loses every key for a moment); a
    /// failed check says nothing (Redis being away is not a node dying).
    pub async fn is_alive(&self, node: &str) -> bool {
        let cached = self.alive.lock().unwrap().get(node).copied();
        let missing_since = match cached {
            Some((at, missing)) if at.elapsed() < Duration::from_secs(1) => missing,
            _ => {
                let mut c = self.conn();
                let Ok(exists) = timed(c.exists::<_, bool>(alive_key(node))).await else {
                    return true;
                };
                let now = Instant::now();
                let missing = match (exists, cached) {
                    (true, _) => None,
                    (false, Some((_, Some(since)))) => Some(since),
                    (false, _) => Some(now),
                };
                let mut alive = self.alive.lock().unwrap();
                // Forget nodes not asked about for a while.
                alive.retain(|_, (at, _)| at.elapsed() < Duration::from_secs(60));
                alive.insert(node.to_owned(), (now, missing));
                missing
            }
        };
        missing_since.is_none_or(|since| since.elapsed() < DEAD_AFTER_MISSING)
    }

    /// Record that room `id` lives here, for `lifetime`.
    pub async fn claim_room(&self, id: &str, lifetime: Duration) -> Result<(), ClusterError> {
        let mut c = self.conn();
        timed(c.set_ex::<_, _, ()>(room_key(id), &self.node, lifetime.as_secs().max(1))).await
    }

    /// Record rooms again (Redis lost them): each room's node, and its number for what is
    /// left of its wait, unless another room took that number meanwhile. In batches, one
    /// round trip each.
    pub async fn record_all(
        &self,
        rooms: &[(String, Option<u32>, Duration)],
        lifetime: Duration,
    ) -> Result<(), ClusterError> {
        for batch in rooms.chunks(512) {
            let mut p = redis::pipe();
            for (id, number, wait) in batch {
                p.set_ex(room_key(id), &self.node, lifetime.as_secs().max(1))
                    .ignore();
                if let Some(n) = number {
                    let opts = redis::SetOptions::default()
                        .conditional_set(redis::ExistenceCheck::NX)
                        .with_expiration(redis::SetExpiry::EX(wait.as_secs().max(1)));
                    p.set_options(number_key(*n), id, opts).ignore();
                }
            }
            let mut c = self.conn();
            timed(p.query_async::<()>(&mut c)).await?;
        }
        Ok(())
    }

    /// Take number `n` for room `id` for `ttl`, unless another room has it.
    pub async fn claim_number(
        &self,
        n: u32,
        id: &str,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        let mut c = self.conn();
        let opts = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::EX(ttl.as_secs().max(1)));
        let set: Option<String> = timed(c.set_options(number_key(n), id, opts)).await?;
        if set.is_some() {
            return Ok(true);
        }
        // Already this room's (the code shown again)?
        let holder: Option<String> = timed(c.get(number_key(n))).await?;
        Ok(holder.as_deref() == Some(id))
    }

    /// Where the room `which` names lives: its id and node, if any node has it.
    pub async fn locate(&self, which: &RoomRef) -> Result<Option<(String, String)>, ClusterError> {
        let mut c = self.conn();
        let id = match which {
            RoomRef::Id(id) => id.clone(),
            RoomRef::Number(n) => match timed(c.get::<_, Option<String>>(number_key(*n))).await? {
                Some(id) => id,
                None => return Ok(None),
            },
        };
        let node: Option<String> = timed(c.get(room_key(&id))).await?;
        Ok(node.map(|node| (id, node)))
    }

    /// Count one room created or joined by `client` (address or /64) against the limit
    /// shared by every node; `false` once it is over. A sliding window over two one-minute
    /// counters (the last minute's weighted by how much of it is still in the window), so
    /// a client gets no fresh burst at a minute's turn.
    pub async fn room_allowed(&self, client: IpAddr) -> Result<bool, ClusterError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let minute = now.as_secs() / 60;
        let into = (now.as_secs_f64() % 60.0) / 60.0;
        let who = crate::limits::subscriber(client);
        let (this, last) = (
            format!("pd:lim:{who}:{minute}"),
            format!("pd:lim:{who}:{}", minute.wrapping_sub(1)),
        );
        let mut c = self.conn();
        let allowed: u64 = timed(
            redis::cmd("EVAL")
                .arg(ROOM_LIMIT_SCRIPT)
                .arg(2)
                .arg(&this)
                .arg(&last)
                .arg(1.0 - into)
                // As the node's own limit: at least one.
                .arg(self.rooms_per_min.max(1))
                .query_async(&mut c),
        )
        .await?;
        Ok(allowed == 1)
    }

    /// Record that inbox `id` (with its sealed name) registered here, for [`INBOX_TTL`]: the
    /// newest registration wins, through whichever node.
    pub async fn claim_inbox(&self, id: &InboxId, name: Option<&str>) -> Result<(), ClusterError> {
        let key = inbox_key(id.as_str());
        let mut p = redis::pipe();
        p.cmd("HSET")
            .arg(&key)
            .arg("node")
            .arg(&self.node)
            .arg("name")
            .arg(name.unwrap_or(""))
            .ignore();
        p.expire(&key, INBOX_TTL.as_secs() as i64).ignore();
        let mut c = self.conn();
        timed(p.query_async::<()>(&mut c)).await
    }

    /// Renew the records of these inboxes registered here. For each: kept, missing (Redis
    /// lost it, or it was just released), or another node's (the inbox registered through
    /// it since: this node's registration is stale).
    pub async fn renew_inboxes(&self, ids: &[InboxId]) -> Result<Vec<Renewal>, ClusterError> {
        let mut renewals = Vec::with_capacity(ids.len());
        for batch in ids.chunks(512) {
            let mut p = redis::pipe();
            for id in batch {
                p.cmd("EVAL")
                    .arg(RENEW_INBOX_SCRIPT)
                    .arg(1)
                    .arg(inbox_key(id.as_str()))
                    .arg(&self.node)
                    .arg(INBOX_TTL.as_secs());
            }
            let mut c = self.conn();
            let answers: Vec<i64> = timed(p.query_async(&mut c)).await?;
            renewals.extend(answers.into_iter().map(|a| match a {
                1 => Renewal::Kept,
                0 => Renewal::Missing,
                _ => Renewal::Elsewhere,
            }));
        }
        Ok(renewals)
    }

    /// Record (again) a volunteer relay listed here, for `ttl` (its reports renew it).
    pub async fn record_relay(
        &self,
        relay: &SharedRelay,
        ttl: Duration,
    ) -> Result<(), ClusterError> {
        let mut p = redis::pipe();
        p.set_ex(
            relay_key(&relay.id),
            serde_json::to_string(relay)?,
            ttl.as_secs().max(1),
        )
        .ignore();
        p.sadd(RELAYS_KEY, &relay.id).ignore();
        let mut c = self.conn();
        timed(p.query_async::<()>(&mut c)).await
    }

    /// A volunteer relay listed here left the pool.
    pub async fn release_relay(&self, id: &str) -> Result<(), ClusterError> {
        let mut p = redis::pipe();
        p.del(relay_key(id)).ignore();
        p.srem(RELAYS_KEY, id).ignore();
        let mut c = self.conn();
        timed(p.query_async::<()>(&mut c)).await
    }

    /// The volunteer relays listed on other nodes.
    pub async fn other_relays(&self) -> Result<Vec<SharedRelay>, ClusterError> {
        let mut c = self.conn();
        let ids: Vec<String> = timed(c.smembers(RELAYS_KEY)).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| relay_key(id)).collect();
        let records: Vec<Option<String>> = timed(c.mget(&keys)).await?;
        let mut relays = Vec::new();
        let mut gone = Vec::new();
        for (id, record) in ids.iter().zip(records) {
            match record.and_then(|r| serde_json::from_str::<SharedRelay>(&r).ok()) {
                Some(r) if r.node != self.node => relays.push(r),
                Some(_) => {}
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let _: Result<(), _> = timed(c.srem(RELAYS_KEY, gone)).await;
        }
        Ok(relays)
    }

    /// Inbox `id` is no longer registered here (its record is deleted if still this
    /// node's).
    pub async fn release_inbox(&self, id: &InboxId) -> Result<(), ClusterError> {
        let mut c = self.conn();
        let _: i64 = timed(
            redis::cmd("EVAL")
                .arg(RELEASE_INBOX_SCRIPT)
                .arg(1)
                .arg(inbox_key(id.as_str()))
                .arg(&self.node)
                .query_async(&mut c),
        )
        .await?;
        Ok(())
    }

    /// Where each of `ids` is registered, if on another live node: that node and the
    /// inbox's sealed name. One round trip for all.
    pub async fn locate_inboxes(
        &self,
        ids: &[InboxId],
    ) -> Result<Vec<Option<(String, Option<String>)>>, ClusterError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for id in ids {
            p.cmd("HMGET")
                .arg(inbox_key(id.as_str()))
                .arg("node")
                .arg("name");
        }
        let mut c = self.conn();
        let found: Vec<(Option<String>, Option<String>)> = timed(p.query_async(&mut c)).await?;
        let mut alive: HashMap<String, bool> = HashMap::new();
        let mut located = Vec::with_capacity(found.len());
        for (node, name) in found {
            let Some(node) = node.filter(|n| *n != self.node) else {
                located.push(None);
                continue;
            };
            let up = match alive.get(&node) {
                Some(&up) => up,
                None => {
                    let up = self.is_alive(&node).await;
                    alive.insert(node.clone(), up);
                    up
                }
            };
            located.push(up.then(|| (node, name.filter(|n| !n.is_empty()))));
        }
        Ok(located)
    }

    /// Publish `env` to `node`: whether any node heard it.
    async fn publish(&self, node: &str, env: &Envelope) -> Result<bool, ClusterError> {
        let payload = serde_json::to_string(env)?;
        let mut c = self.conn();
        let heard: u64 = timed(c.publish(channel(node), payload)).await?;
        Ok(heard > 0)
    }

    /// A client of this node enters a room on `node`: its messages go there from now on,
    /// and what comes back for it goes to `tx`.
    pub fn proxy(&self, node: String, tx: Outbox) -> Upstream {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.proxied
            .lock()
            .unwrap()
            .insert(conn, (tx, node.clone()));
        self.listed_to
            .lock()
            .unwrap()
            .insert(node.clone(), Instant::now());
        Upstream { node, conn }
    }

    /// Forward a proxied client's message to its room's node; `false` if that node is gone.
    pub async fn forward(
        &self,
        up: &Upstream,
        ip: IpAddr,
        msg: ClientMessage,
    ) -> Result<bool, ClusterError> {
        let env = Envelope::Client {
            node: self.node.clone(),
            conn: up.conn,
            ip,
            msg,
        };
        self.publish(&up.node, &env).await
    }

    /// A proxied client's connection ended: its room's node is told, again over a few
    /// seconds if Redis is away (a room's node that never hears it keeps a ghost in the room).
    pub fn unproxy(self: &std::sync::Arc<Self>, up: &Upstream, how: Departure) {
        self.detach(up);
        let env = Envelope::Gone {
            node: self.node.clone(),
            conn: up.conn,
            how,
        };
        let (me, node) = (self.clone(), up.node.clone());
        tokio::spawn(async move { me.tell_gone(&node, &env).await });
    }

    async fn tell_gone(&self, node: &str, env: &Envelope) {
        // Nobody heard it: the room's node may be subscribing again (Redis came back), or dead.
        for wait in [0, 500, 1000, 2000, 4000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match self.publish(node, env).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "could not tell a room's node its client left")
                }
            }
        }
    }

    /// A proxied client's room let it go: it is this node's alone again.
    pub fn detach(&self, up: &Upstream) {
        self.proxied.lock().unwrap().remove(&up.conn);
    }

    /// Tell each node with rooms this node's clients are in which clients those still are.
    async fn list_clients(&self) {
        let mut by_node: HashMap<String, Vec<u64>> = HashMap::new();
        {
            let mut listed_to = self.listed_to.lock().unwrap();
            listed_to.retain(|_, at| at.elapsed() < LIST_AFTER_LAST);
            for node in listed_to.keys() {
                by_node.insert(node.clone(), Vec::new());
            }
        }
        for (conn, (_, node)) in self.proxied.lock().unwrap().iter() {
            by_node.entry(node.clone()).or_default().push(*conn);
        }
        for (node, conns) in by_node {
            let env = Envelope::Clients {
                node: self.node.clone(),
                conns,
            };
            let _ = self.publish(&node, &env).await;
        }
    }

    /// This node's clients now in rooms on other nodes (a draining node waits for them).
    pub fn proxied(&self) -> usize {
        self.proxied.lock().unwrap().len()
    }

    /// Send what this node's room has for a remote client.
    pub async fn to_remote(&self, node: &str, conn: u64, out: Outgoing) {
        let env = Envelope::Server { conn, out };
        if let Err(e) = self.publish(node, &env).await {
            tracing::debug!(error = %e, "could not reach a remote client's node");
        }
    }

    /// A remote client's connection is over here.
    pub fn forget_remote(&self, node: &str, conn: u64) {
        self.remote.lock().unwrap().remove(&(node.to_owned(), conn));
    }

    /// Handle one envelope from this node's channel: a new remote client comes back to be
    /// served, or a message for a client this node no longer has, to be answered with
    /// `not_in_room` and a close (its node thinks it is in a room here).
    fn receive(&self, env: Envelope) -> Option<Received> {
        match env {
            Envelope::Server { conn, out } => {
                if let Some((tx, _)) = self.proxied.lock().unwrap().get(&conn) {
                    let _ = tx.try_send(out);
                }
                None
            }
            Envelope::Gone { node, conn, how } => {
                if let Some(e) = self.remote.lock().unwrap().remove(&(node, conn)) {
                    let _ = e.gone.send(Some(how));
                }
                None
            }
            Envelope::Clients { node, conns } => {
                // A client that came a moment ago may not be in a list made before it came.
                self.remote.lock().unwrap().retain(|(n, conn), e| {
                    let listed = *n != node
                        || conns.contains(conn)
                        || e.since.elapsed() < LIVENESS_CHECK * 2;
                    if !listed {
                        let _ = e.gone.send(Some(Departure::BrokeOff));
                    }
                    listed
                });
                None
            }
            Envelope::Client {
                node,
                conn,
                ip,
                msg,
            } => {
                let mut remote = self.remote.lock().unwrap();
                let key = (node, conn);
                if let Some(e) = remote.get(&key) {
                    // A client that does not wait for its answers loses messages, as a socket
                    // whose peer does not read would.
                    let _ = e.tx.try_send(msg);
                    return None;
                }
                // Only entering a room (one of ours, or a drop into an inbox of ours) starts a
                // remote connection.
                if !matches!(
                    msg,
                    ClientMessage::Join { .. }
                        | ClientMessage::Reclaim { .. }
                        | ClientMessage::Knock { .. }
                ) {
                    return Some(Received::Stray {
                        node: key.0,
                        conn: key.1,
                    });
                }
                let (tx, inbound) = mpsc::channel(64);
                let (gone_tx, gone) = tokio::sync::watch::channel(None);
                remote.insert(
                    key.clone(),
                    RemoteEntry {
                        tx,
                        gone: gone_tx,
                        since: Instant::now(),
                    },
                );
                Some(Received::Client(RemoteClient {
                    node: key.0,
                    conn: key.1,
                    ip,
                    first: msg,
                    inbound,
                    gone,
                }))
            }
        }
    }

    /// Keep this node's subscription (made again whenever it breaks) and its liveness key,
    /// handing each new remote client to `serve`; `lost` runs when Redis no longer has this
    /// node's records (it restarted empty): the node's rooms are to be recorded again.
    /// `subscribed` is told once the first subscription is made: until then what other nodes
    /// publish for this node's clients (a join's answer) is lost, so the node takes no
    /// client before.
    pub async fn run(
        self: std::sync::Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
        serve: impl Fn(RemoteClient) + Send + 'static,
        lost: impl Fn() + Send + Sync + 'static,
        subscribed_first: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut subscribed_first = Some(subscribed_first);
        let resubscribe = std::sync::Arc::new(tokio::sync::Notify::new());
        let subscribed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lost = std::sync::Arc::new(lost);
        let beats = tokio::spawn(self.clone().keep_alive(
            stop.clone(),
            resubscribe.clone(),
            subscribed.clone(),
            {
                let lost = lost.clone();
                move || lost()
            },
        ));
        let mut first = true;
        while !stop.is_cancelled() {
            let sub = async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(channel(&self.node)).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            let mut ps = match tokio::time::timeout(REDIS_TIMEOUT, sub).await {
                Ok(Ok(ps)) => ps,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "redis subscription failed; retrying");
                    tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                    continue;
                }
                Err(_) => {
                    tracing::warn!("redis subscription timed out; retrying");
                    continue;
                }
            };
            subscribed.store(true, Ordering::Relaxed);
            if let Some(tell) = subscribed_first.take() {
                let _ = tell.send(());
            }
            if std::mem::replace(&mut first, false) {
                // The first subscription of this node: nothing to record again.
            } else {
                // Redis came back, perhaps empty (a restart): say this node is alive and record
                // its rooms at once rather than at the next heartbeat.
                let _ = self.heartbeat().await;
                lost();
            }
            let mut messages = ps.on_message();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    () = resubscribe.notified() => break,
                    m = messages.next() => {
                        let Some(m) = m else { break };
                        let Ok(payload) = m.get_payload::<String>() else { continue };
                        match serde_json::from_str::<Envelope>(&payload) {
                            Ok(env) => {
                                match self.receive(env) {
                                    Some(Received::Client(client)) => serve(client),
                                    Some(Received::Stray { node, conn }) => {
                                        let me = self.clone();
                                        tokio::spawn(async move {
                                            let msg = ServerMessage::Error {
                                                code: ErrorCode::NotInRoom,
                                                message: ErrorCode::NotInRoom.explain().into(),
                                            };
                                            me.to_remote(&node, conn, Outgoing::Final(msg)).await;
                                        });
                                    }
                                    None => {}
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "unreadable cluster message"),
                        }
                    }
                }
            }
            subscribed.store(false, Ordering::Relaxed);
            if !stop.is_cancelled() {
                tracing::warn!("redis subscription lost; making it again");
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
            }
        }
        beats.abort();
        let mut c = self.conn();
        let _ = timed(c.del::<_, ()>(alive_key(&self.node))).await;
    }

    /// Renew the liveness key every [`HEARTBEAT`]; ask for a new subscription when the
    /// channel has none, and call `lost` when Redis forgot this node.
    async fn keep_alive(
        self: std::sync::Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
        resubscribe: std::sync::Arc<tokio::sync::Notify>,
        subscribed: std::sync::Arc<std::sync::atomic::AtomicBool>,
        lost: impl Fn() + Send + 'static,
    ) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.list_clients().await;
            match self.beat().await {
                Ok(beat) => {
                    if !beat.records_kept {
                        tracing::info!("redis lost this node's records; recording its rooms again");
                        lost();
                    }
                    if !beat.subscribed && subscribed.swap(false, Ordering::Relaxed) {
                        resubscribe.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis unreachable: this node cannot say it is alive");
                }
            }
        }
    }
}

/// What one heartbeat learnt ([`Cluster::beat`]).
#[derive(Debug, Clone, Copy)]
struct Beat {
    records_kept: bool,
    subscribed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope's JSON is a contract between nodes of different versions in one
    /// deployment during a rolling upgrade.
    #[test]
    fn envelopes_keep_their_json() {
        let env = Envelope::Client {
            node: "n1".into(),
            conn: 7,
            ip: "192.0.2.1".parse().unwrap(),
            msg: ClientMessage::ShowCode,
        };
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"{"t":"client","node":"n1","conn":7,"ip":"192.0.2.1","msg":{"type":"show_code"}}"#
        );
        let env = Envelope::Server {
            conn: 7,
            out: Outgoing::Final(ServerMessage::PeerLeft),
        };
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"{"t":"server","conn":7,"out":{"k":"final","v":{"type":"peer_left"}}}"#
        );
        let env = Envelope::Gone {
            node: "n1".into(),
            conn: 7,
            how: Departure::Silent,
        };
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"{"t":"gone","node":"n1","conn":7,"how":"silent"}"#
        );
        let env = Envelope::Clients {
            node: "n1".into(),
            conns: vec![7, 9],
        };
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"{"t":"clients","node":"n1","conns":[7,9]}"#
        );
    }
}
