//! TURN over TCP and over TLS for webrtc-rs, whose TURN client speaks UDP only.
//!
//! A bridge listens on a loopback UDP port and stands in for one `turn:HOST:PORT?transport=tcp`
//! or `turns:HOST:PORT` server: every local UDP source (one per ICE socket, so one per allocation) gets its own TCP
//! connection (inside TLS for `turns:`, checked against HOST as `wss://` is) to the real
//! server, and messages are carried across as RFC 5766 §2.1 frames —
//! STUN messages as they are, ChannelData padded to a multiple of four bytes on the stream and
//! unpadded on the way back. TURN's integrity protection does not cover the transport, so the
//! server sees an ordinary TURN-over-TCP client. This is what lets a peer behind a network
//! that drops all UDP still reach a relay, and one that lets only TLS out reach it on 5349.
//!
//! Invariant: a bridge lives as long as its peer connection ([`Bridges`] aborts on drop).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use protocol::path::Transport;

/// Largest TURN frame: ChannelData/STUN lengths are 16-bit.
const MAX_FRAME: usize = 4 + 65535 + 3;

/// Total length on the wire of the frame starting with `head` (≥ 4 bytes), or `None` if it is
/// neither STUN nor ChannelData.
fn frame_len(head: &[u8], padded: bool) -> Option<usize> {
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    match head[0] >> 6 {
        0b00 => Some(20 + len),
        0b01 => Some(if padded {
            (4 + len).div_ceil(4) * 4
        } else {
            4 + len
        }),
        _ => None,
    }
}

/// Running bridges for one peer connection; dropping them stops them.
#[derive(Debug, Default)]
pub struct Bridges {
    tasks: Vec<JoinHandle<()>>,
    /// The stand-in URLs handed to webrtc-rs and what they carry over, to tell TCP and TLS
    /// relays apart in the stats.
    pub urls: Vec<(String, Transport)>,
}

/// A TURN server a bridge reaches: its address, and for TLS the name its certificate has.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<rustls::pki_types::ServerName<'static>>,
}

impl Drop for Bridges {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Bridges {
    /// Start a bridge to `server`; returns the `turn:` URL that reaches it over UDP.
    pub async fn add(&mut self, server: Target) -> io::Result<String> {
        let std_udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        // Bursts from webrtc-rs must not be dropped here while the TCP side catches up.
        net::size_udp_buffers(&std_udp, net::UDP_BUFFER);
        std_udp.set_nonblocking(true)?;
        let udp = Arc::new(UdpSocket::from_std(std_udp)?);
        let url = format!("turn:{}?transport=udp", udp.local_addr()?);
        let transport = match server.tls {
            Some(_) => Transport::Tls,
            None => Transport::Tcp,
        };
        self.tasks.push(tokio::spawn(run(udp, server)));
        self.urls.push((url.clone(), transport));
        Ok(url)
    }
}

/// Frames queued per TCP connection: ≈ 10 MB of ChannelData, above the SCTP window.
const QUEUE_FRAMES: usize = 8192;

async fn run(udp: Arc<UdpSocket>, server: Target) {
    let streams: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, src)) = udp.recv_from(&mut buf).await else {
            return;
        };
        // webrtc-rs pads ChannelData to four bytes even over UDP; accept either form.
        let (Some(exact), Some(padded)) = (
            (n >= 4).then(|| frame_len(&buf[..n], false)).flatten(),
            (n >= 4).then(|| frame_len(&buf[..n], true)).flatten(),
        ) else {
            continue;
        };
        if n != exact && n != padded {
            continue;
        }
        // On a stream, ChannelData must be padded to four bytes.
        let mut frame = buf[..exact].to_vec();
        frame.resize(padded, 0);
        let tx = {
            let mut map = streams.lock().await;
            match map.get(&src) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
                    tokio::spawn(connection(
                        server.clone(),
                        src,
                        udp.clone(),
                        rx,
                        streams.clone(),
                    ));
                    map.insert(src, tx.clone());
                    tx
                }
            }
        };
        // A full queue means the server is not keeping up: drop, as a UDP path would. The
        // queue holds more than SCTP keeps in flight, so a TCP connection that is still
        // opening its window does not cost drops (each one halves SCTP's window, and at
        // 20 ms RTT a 256-frame queue held the path to ≈ 1.5 MB/s).
        let _ = tx.try_send(frame);
    }
}

/// One TCP connection carrying the traffic of local source `src`.
async fn connection(
    server: Target,
    src: SocketAddr,
    udp: Arc<UdpSocket>,
    rx: mpsc::Receiver<Vec<u8>>,
    streams: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>,
) {
    let result: io::Result<()> = async {
        let tcp = TcpStream::connect(server.addr).await?;
        tcp.set_nodelay(true)?;
        match server.tls {
            None => carry(tcp, src, &udp, rx).await,
            Some(name) => {
                let tls = tokio_rustls::TlsConnector::from(crate::wss::client())
                    .connect(name, tcp)
                    .await?;
                carry(tls, src, &udp, rx).await
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!("TURN-over-TCP bridge connection ended: {e}");
    }
    streams.lock().await.remove(&src);
}

/// Carry frames between the stream to the server and local source `src`.
async fn carry<S>(
    stream: S,
    src: SocketAddr,
    udp: &UdpSocket,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let to_server = async {
        while let Some(frame) = rx.recv().await {
            wr.write_all(&frame).await?;
            // TLS buffers what it seals: send it now, as a TCP write would go.
            wr.flush().await?;
        }
        io::Result::Ok(())
    };
    let from_server = async {
        let mut acc = Vec::with_capacity(MAX_FRAME * 2);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = rd.read(&mut chunk).await?;
            if n == 0 {
                return io::Result::Ok(());
            }
            acc.extend_from_slice(&chunk[..n]);
            while acc.len() >= 4 {
                let (Some(wire), Some(msg)) = (frame_len(&acc, true), frame_len(&acc, false))
                else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "not a TURN stream",
                    ));
                };
                if acc.len() < wire {
                    break;
                }
                let _ = udp.send_to(&acc[..msg], src).await;
                acc.drain(..wire);
            }
        }
    };
    tokio::select! {
        r = to_server => r,
        r = from_server => r,
    }
}

/// `HOST:PORT` of a `turn:` URL with `transport=tcp`, if it is one.
pub fn tcp_turn_target(url: &str) -> Option<String> {
    let rest = url.strip_prefix("turn:")?;
    let (hostport, query) = rest.split_once('?')?;
    query
        .split('&')
        .any(|kv| kv.eq_ignore_ascii_case("transport=tcp"))
        .then(|| hostport.to_string())
}

/// TURN over TLS's port when a `turns:` URL names none (RFC 7065).
const TURNS_PORT: u16 = 5349;

/// `HOST:PORT` and HOST of a `turns:` URL (TURN over TLS, always over TCP).
pub fn tls_turn_target(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("turns:")?;
    let hostport = rest.split('?').next()?;
    let (host, port) = match hostport.rsplit_once(':') {
        // `[v6]` alone: its colons are not a port's.
        _ if hostport.ends_with(']') => (hostport, None),
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, Some(port))
        }
        Some(_) if !hostport.starts_with('[') => return None,
        _ => (hostport, None),
    };
    if host.is_empty() {
        return None;
    }
    let target = match port {
        Some(_) => hostport.to_string(),
        None => format!("{host}:{TURNS_PORT}"),
    };
    let name = host.trim_start_matches('[').trim_end_matches(']');
    Some((target, name.to_string()))
}

/// Does a TLS connection to `target` (a server named `name`) complete within `wait`? One
/// whose certificate is refused says why, once, as a warning: relaying over it would fail
/// with no other word.
pub async fn tls_answers(target: &str, name: &str, wait: std::time::Duration) -> bool {
    let Ok(server) = rustls::pki_types::ServerName::try_from(name.to_owned()) else {
        return false;
    };
    let handshake = async {
        let tcp = TcpStream::connect(target).await?;
        tokio_rustls::TlsConnector::from(crate::wss::client())
            .connect(server, tcp)
            .await
    };
    match tokio::time::timeout(wait, handshake).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            if let Some(why) = crate::wss::certificate_trouble(&e) {
                tracing::warn!("TURN over TLS cannot be used: {why} ({e})");
            }
            false
        }
        Err(_) => false,
    }
}

/// `host:port` of a `turn:` URL reached over UDP (no transport, or `transport=udp`).
pub fn udp_turn_target(url: &str) -> Option<String> {
    let rest = url.strip_prefix("turn:")?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let tcp = query
        .split('&')
        .any(|kv| kv.eq_ignore_ascii_case("transport=tcp"));
    (!tcp).then(|| hostport.to_string())
}

/// Does a TCP connection to `target` open within `wait`?
pub async fn tcp_answers(target: &str, wait: std::time::Duration) -> bool {
    matches!(
        tokio::time::timeout(wait, TcpStream::connect(target)).await,
        Ok(Ok(_))
    )
}

/// Does a STUN Binding request over UDP to `target` get an answer within `wait`? Asked
/// three times (at 0, ⅓ and ⅔ of `wait`) so one lost datagram does not decide.
pub async fn udp_answers(target: &str, wait: std::time::Duration) -> bool {
    let Ok(Some(addr)) = tokio::time::timeout(wait, tokio::net::lookup_host(target))
        .await
        .map(|r| r.ok().and_then(|mut a| a.next()))
    else {
        return false;
    };
    let bind: std::net::SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return false;
    };
    // Binding request: type 0x0001, length 0, magic cookie, 12-byte transaction id.
    let mut req = [0u8; 20];
    req[1] = 0x01;
    req[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
    let id: [u8; 12] = std::array::from_fn(|i| (std::process::id() as u8) ^ (i as u8 * 37));
    req[8..20].copy_from_slice(&id);
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 1500];
    for attempt in 0..3u32 {
        let _ = sock.send_to(&req, addr).await;
        let until = (tokio::time::Instant::now() + wait / 3).min(deadline);
        while let Ok(Ok((n, from))) = tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await
        {
            // A success or error response to our request, from the server.
            if from == addr && n >= 20 && buf[0] & 0xc0 == 0 && buf[8..20] == id {
                return true;
            }
        }
        tracing::debug!(attempt, "no STUN answer over UDP yet");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_targets() {
        assert_eq!(
            udp_turn_target("turn:198.18.0.1:3478?transport=udp").as_deref(),
            Some("198.18.0.1:3478")
        );
        assert_eq!(udp_turn_target("turn:h:3478").as_deref(), Some("h:3478"));
        assert_eq!(udp_turn_target("turn:h:3478?transport=tcp"), None);
        assert_eq!(udp_turn_target("stun:h:3478"), None);
    }

    #[test]
    fn tls_targets() {
        assert_eq!(
            tls_turn_target("turns:relay.example:5349?transport=tcp"),
            Some(("relay.example:5349".into(), "relay.example".into()))
        );
        assert_eq!(
            tls_turn_target("turns:[2001:db8::1]:5349"),
            Some(("[2001:db8::1]:5349".into(), "2001:db8::1".into()))
        );
        assert_eq!(tls_turn_target("turn:h:3478?transport=tcp"), None);
        assert_eq!(
            tls_turn_target("turns:h"),
            Some(("h:5349".into(), "h".into()))
        );
        assert_eq!(
            tls_turn_target("turns:[2001:db8::1]?transport=tcp"),
            Some(("[2001:db8::1]:5349".into(), "2001:db8::1".into()))
        );
        assert_eq!(tls_turn_target("turns:"), None);
    }

    #[test]
    fn frame_lengths() {
        let stun = [0x00, 0x01, 0x00, 0x08];
        assert_eq!(frame_len(&stun, true), Some(28));
        let chan = [0x40, 0x00, 0x00, 0x05];
        assert_eq!(frame_len(&chan, false), Some(9));
        assert_eq!(frame_len(&chan, true), Some(12));
        assert_eq!(
            frame_len(&[0x80, 0, 0, 0], true),
            None,
            "RTP/DTLS is not TURN"
        );
    }

    #[test]
    fn only_tcp_turn_urls_are_bridged() {
        assert_eq!(
            tcp_turn_target("turn:h:3478?transport=tcp").as_deref(),
            Some("h:3478")
        );
        assert_eq!(tcp_turn_target("turn:h:3478?transport=udp"), None);
        assert_eq!(tcp_turn_target("turn:h:3478"), None);
        assert_eq!(tcp_turn_target("stun:h:3478?transport=tcp"), None);
    }

    /// A fake TURN-over-TCP server echoes frames back; the bridge must split the stream into
    /// datagrams, pad ChannelData on the way in and unpad it on the way out.
    #[tokio::test]
    async fn bridge_frames_both_ways() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut got = vec![0u8; 12 + 28];
            s.read_exact(&mut got).await.unwrap();
            // Padded ChannelData (12 bytes) then a STUN message (28), echoed in one write.
            s.write_all(&got).await.unwrap();
            got
        });
        let mut bridges = Bridges::default();
        let url = bridges.add(Target { addr, tls: None }).await.unwrap();
        let local: SocketAddr = url
            .trim_start_matches("turn:")
            .split('?')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let chan = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        let mut stun = vec![0x00, 0x01, 0x00, 0x08];
        stun.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        stun.extend_from_slice(&[9u8; 12]);
        stun.extend_from_slice(&[7u8; 8]);
        // Padded, as webrtc-rs sends ChannelData even over UDP.
        let mut padded_chan = chan.to_vec();
        padded_chan.extend_from_slice(&[0, 0, 0]);
        client.send_to(&padded_chan, local).await.unwrap();
        client.send_to(&stun, local).await.unwrap();
        let sent = tokio::time::timeout(std::time::Duration::from_secs(5), echo)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&sent[..9], &chan);
        assert_eq!(&sent[9..12], &[0, 0, 0], "ChannelData padded on the stream");
        let mut buf = [0u8; 100];
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &chan, "unpadded on the way back");
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &stun[..]);
    }
}
