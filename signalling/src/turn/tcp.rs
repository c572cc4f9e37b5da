//! TURN over TCP (RFC 5766 §2.1): the same STUN and ChannelData messages on a byte stream,
//! presented to the turn crate, through the gate, as one datagram-like listener.
//!
//! Framing: a STUN message is its 20-byte header plus the length in bytes 2..4; ChannelData
//! is its 4-byte header plus the length, padded to a multiple of 4 on TCP. The first two bits
//! tell them apart (00 STUN, 01 ChannelData); anything else, or a STUN header without the
//! magic cookie, is not TURN and closes the connection.
//!
//! `recv_from` returns the next frame from any connection with that connection's peer
//! address; `send_to(addr)` queues a frame for the connection from `addr`. Invariants:
//!
//! - Memory is bounded: one frame (at most 20 + 65535 bytes: the
//!   length field is 16 bits) is buffered per read, a bounded
//!   queue each way per connection, and at most [`TcpCaps`] connections, in total and per
//!   client (IPv4 address or IPv6 /64; more are closed on accept).
//! - A connection that closes, errs, sends garbage, stays silent (10 s before its first
//!   message, 15 min after) or cannot keep up with STUN responses is closed and forgotten,
//!   and its token ([`Links::closed_token`]) is cancelled so its allocations end with it.
//! - Relayed data (ChannelData, Data indications) to a client whose queue is full is dropped,
//!   as UDP would; a STUN response cannot be (clients do not retransmit over TCP), so then
//!   the connection is closed instead.

use super::TurnMetrics;
use super::gate::Listener;
use super::udp::Flusher;
use crate::limits::{redact_ip, subscriber};
use async_trait::async_trait;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Frames waiting for the turn crate, from all connections (back-pressure beyond).
const INBOUND_QUEUE: usize = 256;
/// Frames waiting to be written to one connection.
const OUTBOUND_QUEUE: usize = 64;
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than any refresh interval: permissions need refreshing every 5 minutes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The open connections by peer address.
#[derive(Debug, Default)]
pub(crate) struct Links {
    map: Mutex<HashMap<SocketAddr, Link>>,
    next_id: AtomicU64,
    /// Connections open on every listener of the server (each family's has its own
    /// `Links`): what the total cap counts.
    open: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Link {
    id: u64,
    out: mpsc::Sender<Vec<u8>>,
    closed: CancellationToken,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Link>> {
        super::lock(&self.map)
    }

    /// Cancelled when the connection from `peer` closes; `None` if it is not open.
    pub fn closed_token(&self, peer: SocketAddr) -> Option<CancellationToken> {
        self.lock().get(&peer).map(|l| l.closed.clone())
    }

    /// Whether another connection from `peer` stays within `caps`.
    fn room_for(&self, peer: SocketAddr, caps: TcpCaps) -> bool {
        let map = self.lock();
        let client = subscriber(peer.ip());
        self.open.load(Ordering::Relaxed) < caps.total
            && map.keys().filter(|a| subscriber(a.ip()) == client).count() < caps.per_client
    }

    fn insert(
        &self,
        peer: SocketAddr,
        out: mpsc::Sender<Vec<u8>>,
        closed: CancellationToken,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A peer address is unique among open connections (it is the TCP 4-tuple here).
        if self.lock().insert(peer, Link { id, out, closed }).is_none() {
            self.open.fetch_add(1, Ordering::Relaxed);
        }
        id
    }

    fn remove(&self, peer: SocketAddr, id: u64) {
        let mut map = self.lock();
        if map.get(&peer).is_some_and(|l| l.id == id) {
            map.remove(&peer);
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn get(&self, peer: SocketAddr) -> Option<(mpsc::Sender<Vec<u8>>, CancellationToken)> {
        self.lock()
            .get(&peer)
            .map(|l| (l.out.clone(), l.closed.clone()))
    }
}

/// How many TURN-over-TCP connections are kept at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpCaps {
    pub total: usize,
    pub per_client: usize,
}

/// The TCP listener as one datagram-like [`Listener`].
#[derive(Debug)]
pub(crate) struct TcpConn {
    local: SocketAddr,
    inbound: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    links: Arc<Links>,
    flusher: Arc<Flusher>,
}

impl TcpConn {
    /// Accept connections on `listener` (and TLS connections on `tls`'s listener, TURN over
    /// TLS: the same frames inside TLS) in the background (on `tasks`) until `shutdown`.
    pub fn start(
        listener: TcpListener,
        tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
        (caps, open): (TcpCaps, Arc<AtomicUsize>),
        metrics: Arc<TurnMetrics>,
        flusher: Arc<Flusher>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> io::Result<Arc<Self>> {
        let local = listener.local_addr()?;
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let links = Arc::new(Links {
            open,
            ..Links::default()
        });
        if let Some((listener, acceptor)) = tls {
            tasks.spawn(accept_loop(
                listener,
                Some(acceptor),
                links.clone(),
                in_tx.clone(),
                (caps, metrics.clone()),
                shutdown.clone(),
                tasks.clone(),
            ));
        }
        tasks.spawn(accept_loop(
            listener,
            None,
            links.clone(),
            in_tx,
            (caps, metrics),
            shutdown,
            tasks.clone(),
        ));
        Ok(Arc::new(Self {
            local,
            inbound: tokio::sync::Mutex::new(in_rx),
            links,
            flusher,
        }))
    }

    pub fn links(&self) -> Arc<Links> {
        self.links.clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    links: Arc<Links>,
    in_tx: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    (caps, metrics): (TcpCaps, Arc<TurnMetrics>),
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "TURN TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !links.room_for(peer, caps) {
            metrics.tcp_refused_total.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %redact_ip(peer.ip()), "TURN TCP connection cap reached; connection closed");
            continue;
        }
        // Relayed media and data: Nagle would add delay to every small packet.
        let _ = stream.set_nodelay(true);
        let closed = shutdown.child_token();
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        // Counted from accept, so connections still in their handshake count against the caps.
        let id = links.insert(peer, out_tx, closed.clone());
        let (in_tx, links) = (in_tx.clone(), links.clone());
        match &tls {
            None => tasks.spawn(serve(stream, peer, id, out_rx, in_tx, links, closed)),
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                tasks.spawn(async move {
                    // The first frame's time limit covers the handshake too; a stop does not
                    // wait for it.
                    let handshake = tokio::time::timeout(FIRST_FRAME_TIMEOUT, handshake);
                    let result = tokio::select! {
                        r = handshake => r.ok(),
                        () = closed.cancelled() => None,
                    };
                    match result {
                        Some(Ok(stream)) => serve(stream, peer, id, out_rx, in_tx, links, closed).await,
                        failed => {
                            let why = match failed {
                                Some(Err(e)) => e.to_string(),
                                _ => "timed out or stopped".to_owned(),
                            };
                            tracing::debug!(client = %redact_ip(peer.ip()), why, "TURN TLS handshake failed");
                            links.remove(peer, id);
                            closed.cancel();
                        }
                    }
                })
            }
        };
    }
}

async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    id: u64,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
    in_tx: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    links: Arc<Links>,
    closed: CancellationToken,
) where
    S: AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let client = redact_ip(peer.ip());
    tracing::debug!(client = %client, "TURN TCP connection opened");
    let (rd, wr) = tokio::io::split(stream);
    let reader = async {
        let mut rd = BufReader::with_capacity(16 * 1024, rd);
        let mut wait = FIRST_FRAME_TIMEOUT;
        loop {
            let frame = match tokio::time::timeout(wait, read_frame(&mut rd)).await {
                Err(_) => return "idle".to_owned(),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return "closed by client".to_owned();
                }
                Ok(Err(e)) => return e.to_string(),
                Ok(Ok(frame)) => frame,
            };
            wait = IDLE_TIMEOUT;
            if in_tx.send((frame, peer)).await.is_err() {
                return "server stopped".to_owned();
            }
        }
    };
    let writer = async {
        let mut wr = BufWriter::with_capacity(64 * 1024, wr);
        while let Some(frame) = out_rx.recv().await {
            wr.write_all(&frame).await?;
            // Coalesce what is already queued into as few writes as possible.
            while let Ok(frame) = out_rx.try_recv() {
                wr.write_all(&frame).await?;
            }
            wr.flush().await?;
        }
        io::Result::Ok(())
    };
    let reason = tokio::select! {
        _ = closed.cancelled() => "closed by server".to_owned(),
        r = reader => r,
        r = writer => match r {
            Ok(()) => "closed by server".to_owned(),
            Err(e) => format!("write failed: {e}"),
        },
    };
    links.remove(peer, id);
    closed.cancel();
    tracing::debug!(client = %client, reason, "TURN TCP connection closed");
}

/// Reads one STUN message or ChannelData (without its padding) from a TURN TCP stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 4];
    rd.read_exact(&mut head).await?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    match head[0] >> 6 {
        0b00 => {
            // STUN attributes are padded, so the length is a multiple of 4 (RFC 5389 §6).
            if len % 4 != 0 {
                return Err(invalid("STUN length not a multiple of 4"));
            }
            let mut frame = vec![0u8; 20 + len];
            frame[..4].copy_from_slice(&head);
            rd.read_exact(&mut frame[4..]).await?;
            if frame[4..8] != stun::message::MAGIC_COOKIE.to_be_bytes() {
                return Err(invalid("not a STUN message"));
            }
            Ok(frame)
        }
        0b01 => {
            let mut frame = vec![0u8; 4 + len];
            frame[..4].copy_from_slice(&head);
            rd.read_exact(&mut frame[4..]).await?;
            let mut pad = [0u8; 3];
            rd.read_exact(&mut pad[..(4 - len % 4) % 4]).await?;
            Ok(frame)
        }
        _ => Err(invalid("neither STUN nor ChannelData")),
    }
}

/// ChannelData goes padded to a multiple of 4 on TCP (RFC 5766 §11.5).
pub(crate) fn pad_channel_data(frame: &mut Vec<u8>) {
    if frame.first().is_some_and(|b| b >> 6 == 0b01) {
        frame.resize(frame.len().next_multiple_of(4), 0);
    }
}

fn not_connected() -> webrtc_util::Error {
    io::Error::from(io::ErrorKind::NotConnected).into()
}

#[async_trait]
impl Listener for TcpConn {
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut inbound = self.inbound.lock().await;
        loop {
            let (frame, from) = match inbound.try_recv() {
                Ok(v) => v,
                Err(_) => {
                    // What handling the last frames queued on relay sockets goes out before
                    // waiting (see `udp.rs`).
                    self.flusher.flush_all();
                    inbound.recv().await.ok_or_else(not_connected)?
                }
            };
            if frame.len() > buf.len() {
                // The turn crate reads 1500 bytes at a time, as over UDP; a UDP datagram this
                // large would have been truncated and then refused anyway.
                tracing::debug!(len = frame.len(), "TURN TCP frame too large; dropped");
                continue;
            }
            buf[..frame.len()].copy_from_slice(&frame);
            return Ok((frame.len(), from));
        }
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let (out, closed) = self.links.get(target).ok_or_else(not_connected)?;
        let mut frame = buf.to_vec();
        pad_channel_data(&mut frame);
        // ChannelData, or a STUN indication (class bits 01): relayed datagrams.
        let datagram = buf.first().is_some_and(|b| b >> 6 == 0b01)
            || (buf.len() >= 2 && u16::from_be_bytes([buf[0], buf[1]]) & 0x0110 == 0x0010);
        match out.try_send(frame) {
            Ok(()) => Ok(buf.len()),
            Err(mpsc::error::TrySendError::Full(_)) if datagram => Ok(buf.len()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                closed.cancel();
                Err(io::Error::new(io::ErrorKind::WouldBlock, "TURN TCP client too slow").into())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(not_connected()),
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_and_joined_arbitrarily_are_read_back() {
        let stun = {
            let mut m = stun::message::Message::new();
            m.build(&[
                Box::new(stun::agent::TransactionId::new()),
                Box::new(stun::message::BINDING_REQUEST),
            ])
            .unwrap();
            m.raw
        };
        let mut chan = vec![0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        pad_channel_data(&mut chan);
        assert_eq!(chan.len(), 12);
        let mut wire = Vec::new();
        wire.extend_from_slice(&stun);
        wire.extend_from_slice(&chan);
        wire.extend_from_slice(&stun);

        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            // One byte at a time: frames must not depend on read boundaries.
            for byte in wire {
                a.write_all(&[byte]).await.unwrap();
            }
        });
        assert_eq!(read_frame(&mut b).await.unwrap(), stun);
        assert_eq!(read_frame(&mut b).await.unwrap(), chan[..9]);
        assert_eq!(read_frame(&mut b).await.unwrap(), stun);
        writer.await.unwrap();
        assert_eq!(
            read_frame(&mut b).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        // A TLS ClientHello parses as a STUN header without the cookie.
        let mut tls = vec![0x16, 0x03, 0x01, 0x00, 0xfc, 0x03, 0x03];
        tls.resize(300, 0);
        for wire in [
            vec![0xff; 8],
            tls,
            vec![
                0x00, 0x01, 0x00, 0x00, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            vec![0x00, 0x01, 0x00, 0x03],
        ] {
            let mut rd = &wire[..];
            let e = read_frame(&mut rd).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{wire:?}");
        }
    }
}
