//! Batched UDP for the TURN server's sockets (the UDP listener and every relay socket):
//! GRO on receive, GSO on send, under the turn crate's one-datagram-at-a-time `Conn`s.
//!
//! Relayed bulk traffic is runs of same-size datagrams between the same two addresses, and
//! the peers already send and receive them in GSO/GRO batches. A relay that reads and writes
//! one datagram per syscall splits every batch: most of the server's CPU went to
//! `sendto`/`recvfrom`, and the receiving peer got one datagram per wakeup. Here
//!
//! - a read takes a whole GRO batch (several, with `recvmmsg`) and hands the turn crate one
//!   datagram per `recv_from` from memory;
//! - a write only queues the datagram. Whoever reads for the server flushes every queue with
//!   something in it ([`Flusher::flush_all`]) before its next receive syscall and before it
//!   waits, so what one batch in produced goes out as GSO batches of consecutive same-size
//!   datagrams to the same address. A background task flushes within a millisecond whatever
//!   a reader did not (a write from another task, a full socket buffer).
//!
//! Invariants: datagrams leave a socket in the order they were queued (one lock covers
//! queueing and flushing); nothing queued is held past the next flush except behind a full
//! socket buffer; a queue holds at most [`MAX_QUEUED`] bytes and a datagram the kernel or a
//! full queue refuses is dropped, as UDP would. Sockets fragment as the kernel's default
//! allows (quinn-udp forbids it; that is undone here), and only datagrams that fit a
//! 1500-byte MTU are sent as GSO runs; a run the kernel refuses is sent one by one.

use super::gate::Listener;
use super::lock;
use async_trait::async_trait;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The kernel coalesces at most 64 KiB into one GRO datagram.
const GRO_BUF: usize = 1 << 16;
/// Largest UDP payload in one GSO send (IPv4: 65535 - 20 - 8).
const MAX_GSO_BYTES: usize = 65_507;
/// Largest datagram sent as part of a GSO run: a GSO segment above the path MTU fails the
/// whole send (and quinn-udp then turns GSO off for the socket), so only what fits a
/// 1500-byte MTU under IPv6 and UDP headers is batched. WebRTC's packets are ≈ 1200 bytes.
const MAX_GSO_SEGMENT: usize = 1500 - 40 - 8;
/// Bytes a socket's write queue may hold (what the kernel's send buffer would).
pub(crate) const MAX_QUEUED: usize = super::UDP_BUFFER;
/// How long a queued datagram may wait for a reader's flush before the background task
/// sends it.
const STRAGGLER_DELAY: Duration = Duration::from_millis(1);

/// The server's sockets with queued datagrams.
#[derive(Debug, Default)]
pub(crate) struct Flusher {
    dirty: Mutex<Vec<Weak<BatchedUdp>>>,
    /// Woken when `dirty` becomes non-empty.
    pending: Notify,
}

impl Flusher {
    fn mark(&self, sock: Weak<BatchedUdp>) {
        let mut dirty = lock(&self.dirty);
        if dirty.is_empty() {
            self.pending.notify_one();
        }
        dirty.push(sock);
    }

    /// Sends everything queued on any socket of the server.
    pub fn flush_all(&self) {
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        for sock in dirty.iter().filter_map(Weak::upgrade) {
            sock.flush();
        }
    }

    /// Flushes what readers left queued, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.pending.notified() => {}
            }
            tokio::time::sleep(STRAGGLER_DELAY).await;
            self.flush_all();
        }
    }
}

#[derive(Debug, Default)]
struct Rx {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    /// Messages in `meta` received by the last syscall.
    msgs: usize,
    /// Next message, and the offset of its next datagram.
    msg: usize,
    offset: usize,
}

impl Rx {
    fn pop(&mut self, out: &mut [u8]) -> Option<(usize, SocketAddr)> {
        while self.msg < self.msgs {
            let m = &self.meta[self.msg];
            // An empty datagram is a datagram too (offset 0 → 1 marks it taken).
            if self.offset < m.len || (m.len == 0 && self.offset == 0) {
                let stride = if m.stride == 0 { m.len } else { m.stride };
                let end = (self.offset + stride).min(m.len);
                let d = &self.bufs[self.msg][self.offset..end];
                let n = d.len().min(out.len());
                out[..n].copy_from_slice(&d[..n]);
                self.offset = end.max(1);
                return Some((n, m.addr));
            }
            self.msg += 1;
            self.offset = 0;
        }
        None
    }
}

#[derive(Debug, Default)]
struct Tx {
    bytes: Vec<u8>,
    /// Destination and length of each datagram in `bytes`, in order.
    datagrams: Vec<(SocketAddr, usize)>,
}

/// A UDP socket read and written in batches (see the module docs).
#[derive(Debug)]
pub(crate) struct BatchedUdp {
    socket: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    messages: usize,
    rx: Mutex<Rx>,
    tx: Mutex<Tx>,
    flusher: Arc<Flusher>,
    this: Weak<BatchedUdp>,
}

impl BatchedUdp {
    /// `messages`: GRO buffers per receive syscall (64 KiB each, allocated on first read).
    pub fn new(
        socket: UdpSocket,
        messages: usize,
        flusher: Arc<Flusher>,
    ) -> std::io::Result<Arc<Self>> {
        let pmtu = PathMtu::save(&socket);
        let state = UdpSocketState::new((&socket).into())?;
        pmtu.restore(&socket);
        let local = socket.local_addr()?;
        Ok(Arc::new_cyclic(|this| Self {
            socket,
            state,
            local,
            messages: messages.max(1),
            rx: Mutex::default(),
            tx: Mutex::default(),
            flusher,
            this: this.clone(),
        }))
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    pub fn flusher(&self) -> &Flusher {
        &self.flusher
    }

    /// The next datagram without waiting: from the last batch, else from one receive syscall
    /// if the socket was seen readable (the server's queued writes are flushed first).
    pub fn try_recv(&self, buf: &mut [u8]) -> std::io::Result<Option<(usize, SocketAddr)>> {
        let mut rx = lock(&self.rx);
        if let Some(v) = rx.pop(buf) {
            return Ok(Some(v));
        }
        Ok(if self.fill(&mut rx)? {
            rx.pop(buf)
        } else {
            None
        })
    }

    /// Refills the batch: true if the syscall brought datagrams.
    fn fill(&self, rx: &mut Rx) -> std::io::Result<bool> {
        let r = self.socket.try_io(Interest::READABLE, || {
            self.flusher.flush_all();
            // Allocated on the first datagram: many relays never read one.
            if rx.bufs.is_empty() {
                rx.bufs = vec![vec![0u8; GRO_BUF]; self.messages];
                rx.meta = vec![RecvMeta::default(); self.messages];
            }
            let mut slices: Vec<IoSliceMut<'_>> =
                rx.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            self.state
                .recv((&self.socket).into(), &mut slices, &mut rx.meta)
        });
        match r {
            Ok(n) => {
                rx.msgs = n;
                rx.msg = 0;
                rx.offset = 0;
                Ok(n > 0)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until the socket may have datagrams (cancel-safe).
    pub async fn readable(&self) -> std::io::Result<()> {
        self.socket.readable().await
    }

    /// Queues one datagram; it leaves at the next flush. Dropped if the queue is full.
    pub fn queue(&self, data: &[u8], to: SocketAddr) {
        let first = {
            let mut tx = lock(&self.tx);
            if tx.bytes.len() + data.len() > MAX_QUEUED {
                tracing::trace!("TURN write queue full: datagram dropped");
                return;
            }
            tx.bytes.extend_from_slice(data);
            tx.datagrams.push((to, data.len()));
            tx.datagrams.len() == 1
        };
        if first {
            self.flusher.mark(self.this.clone());
        }
    }

    /// Sends what is queued: runs of same-size datagrams to one address go as one GSO send.
    /// What a full socket buffer refuses stays queued for the background flush.
    fn flush(&self) {
        let mut tx = lock(&self.tx);
        let max_segments = self.state.max_gso_segments().max(1);
        let (mut i, mut start) = (0, 0);
        while i < tx.datagrams.len() {
            let (to, size) = tx.datagrams[i];
            let mut j = i + 1;
            let mut len = size;
            let limit = if size == 0 || size > MAX_GSO_SEGMENT {
                1
            } else {
                max_segments.min(MAX_GSO_BYTES / size)
            };
            while j < tx.datagrams.len() && j - i < limit {
                let (t, s) = tx.datagrams[j];
                if t != to || s > size {
                    break;
                }
                len += s;
                j += 1;
                // A shorter datagram can only end a GSO run.
                if s < size {
                    break;
                }
            }
            let contents = &tx.bytes[start..start + len];
            let mut r = self.send(to, contents, (j - i > 1).then_some(size));
            if r.as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock)
                && j - i > 1
            {
                // The kernel refused the GSO run (no offload, a smaller MTU): one by one.
                r = contents
                    .chunks(size)
                    .try_for_each(|d| self.send(to, d, None).or_else(ignore_refused));
            }
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // A partly sent run is sent again whole: a duplicate UDP may deliver anyway.
                    tx.bytes.drain(..start);
                    tx.datagrams.drain(..i);
                    drop(tx);
                    self.flusher.mark(self.this.clone());
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "TURN datagrams dropped: send failed"),
            }
            start += len;
            i = j;
        }
        tx.bytes.clear();
        tx.datagrams.clear();
        // A burst's worth of capacity is not kept for good.
        if tx.bytes.capacity() > MAX_QUEUED / 4 {
            tx.bytes.shrink_to(GRO_BUF);
            tx.datagrams.shrink_to(64);
        }
    }

    fn send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> std::io::Result<()> {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        self.state.try_send((&self.socket).into(), &t)
    }
}

/// A datagram the kernel refuses outright is lost like any other; only a full buffer stops
/// the flush.
fn ignore_refused(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return Err(e);
    }
    tracing::debug!(error = %e, "TURN datagram dropped: send failed");
    Ok(())
}

/// The socket's path-MTU setting before quinn-udp forbade fragmentation, to put back: a TURN
/// server fragments what does not fit unless the client asks otherwise (RFC 5766 §9).
struct PathMtu {
    #[cfg(target_os = "linux")]
    v4: Option<rustix::net::sockopt::Ipv4PathMtuDiscovery>,
    #[cfg(target_os = "linux")]
    v6: Option<rustix::net::sockopt::Ipv6PathMtuDiscovery>,
}

impl PathMtu {
    fn save(socket: &UdpSocket) -> Self {
        #[cfg(target_os = "linux")]
        {
            use rustix::net::sockopt;
            let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
            Self {
                v4: sockopt::ip_mtu_discover(socket).ok(),
                v6: v6
                    .then(|| sockopt::ipv6_mtu_discover(socket).ok())
                    .flatten(),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = socket;
            Self {}
        }
    }

    fn restore(self, socket: &UdpSocket) {
        #[cfg(target_os = "linux")]
        {
            use rustix::net::sockopt;
            if let Some(v) = self.v4 {
                let _ = sockopt::set_ip_mtu_discover(socket, v);
            }
            if let Some(v) = self.v6 {
                let _ = sockopt::set_ipv6_mtu_discover(socket, v);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = socket;
    }
}

/// The UDP listener, behind the gate.
#[async_trait]
impl Listener for BatchedUdp {
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        // Datagrams from memory never make the task wait: let tokio's budget make it yield.
        tokio::task::consume_budget().await;
        loop {
            if let Some(v) = self.try_recv(buf)? {
                return Ok(v);
            }
            // What handling the last batch produced goes out before waiting.
            self.flusher.flush_all();
            self.readable().await?;
        }
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.queue(buf, target);
        Ok(buf.len())
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (Arc<Flusher>, Arc<BatchedUdp>, UdpSocket) {
        let flusher = Arc::new(Flusher::default());
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = BatchedUdp::new(a, 2, flusher.clone()).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (flusher, a, b)
    }

    /// Mixed sizes and destinations, flushed at once, arrive whole and in order; a reader
    /// gets every datagram of a GSO batch one by one.
    #[tokio::test]
    async fn queued_datagrams_arrive_whole_and_in_order() {
        let (flusher, a, b) = pair().await;
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (b_addr, c_addr) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut buf = vec![0u8; 2048];
        // Rounds small enough for a default-sized receive buffer.
        for round in 0..5 {
            let (mut sent_b, mut sent_c) = (Vec::new(), Vec::new());
            for i in round * 60..(round + 1) * 60 {
                let size = match i % 25 {
                    24 => 17,
                    23 => 1400,
                    _ => 1200,
                };
                let d: Vec<u8> = (0..size).map(|k| (i * 7 + k) as u8).collect();
                if i % 37 == 36 {
                    a.queue(&d, c_addr);
                    sent_c.push(d);
                } else {
                    a.queue(&d, b_addr);
                    sent_b.push(d);
                }
            }
            flusher.flush_all();
            for want in sent_b {
                let (n, from) = b.recv_from(&mut buf).await.unwrap();
                assert_eq!((&buf[..n], from), (&want[..], a.local()));
            }
            for want in sent_c {
                let (n, _) = c.recv_from(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], &want[..]);
            }
        }
        // And back: a GSO batch from `a` to a batched reader is split into its datagrams.
        let (flusher2, r, _) = pair().await;
        for i in 0..40u8 {
            a.queue(&[i; 1000], r.local());
        }
        a.queue(&[99; 10], r.local());
        flusher.flush_all();
        drop(flusher2);
        let mut got = Vec::new();
        while got.len() < 41 {
            match tokio::time::timeout(Duration::from_secs(5), r.recv_from(&mut buf))
                .await
                .unwrap()
            {
                Ok((n, from)) => {
                    assert_eq!(from, a.local());
                    got.push(buf[..n].to_vec());
                }
                Err(e) => panic!("{e}"),
            }
        }
        let want: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; 1000])
            .chain([vec![99; 10]])
            .collect();
        assert_eq!(got, want);
    }

    /// Nobody reads for the server: the background flush still sends within milliseconds.
    #[tokio::test]
    async fn background_flush_sends_what_no_reader_flushed() {
        let (flusher, a, b) = pair().await;
        let stop = CancellationToken::new();
        tokio::spawn(flusher.clone().run(stop.clone()));
        a.send_to(b"late", b.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), b.recv_from(&mut buf))
            .await
            .expect("the background flush sends it")
            .unwrap();
        assert_eq!(&buf[..n], b"late");
        stop.cancel();
    }

    /// Datagrams above a GSO segment go one by one and arrive whole; an empty datagram is
    /// delivered as one; the fragmentation setting is the kernel's default again.
    #[tokio::test]
    async fn big_and_empty_datagrams_and_fragmentation() {
        let (flusher, a, _) = pair().await;
        let (_, r, plain) = pair().await;
        for i in 0..8u8 {
            a.queue(&[i; 3000], r.local());
        }
        flusher.flush_all();
        plain.send_to(&[], r.local()).await.unwrap();
        plain.send_to(b"after", r.local()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        for i in 0..8u8 {
            let (n, from) = r.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], from), (&[i; 3000][..], a.local()));
        }
        let plain_addr = plain.local_addr().unwrap();
        assert_eq!(r.recv_from(&mut buf).await.unwrap(), (0, plain_addr));
        let (n, _) = r.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"after");
        #[cfg(target_os = "linux")]
        assert_eq!(
            rustix::net::sockopt::ip_mtu_discover(&r.socket)
                .map(|v| v.as_raw())
                .unwrap(),
            rustix::net::sockopt::ip_mtu_discover(&plain)
                .map(|v| v.as_raw())
                .unwrap(),
        );
    }

    /// With nothing flushing, the queue stops at its cap instead of growing.
    #[tokio::test]
    async fn write_queue_is_bounded() {
        let (_, a, b) = pair().await;
        let to = b.local_addr().unwrap();
        for _ in 0..2 * MAX_QUEUED / 1000 {
            a.queue(&[7; 1000], to);
        }
        let tx = lock(&a.tx);
        assert_eq!(tx.datagrams.len(), MAX_QUEUED / 1000);
        assert!(tx.bytes.len() <= MAX_QUEUED);
    }
}
