//! The honest baseline for the lab's throughput: a plain TCP copy of the same file between
//! the same two hosts, over the same routers and wire ([`super::Lab::tcp_copy`]).
//!
//! Host B's router forwards a TCP port to host B (as a user forwards one by hand); host A
//! connects to router B's WAN address. Both ends run in threads of this process that entered
//! the hosts' network namespaces (`setns` moves only the calling thread), so nothing but the
//! kernel's own TCP with the namespace's default congestion control and buffer sizes moves
//! the bytes: both ends with `std::io::copy` (sendfile out of the file, splice into the
//! file on disk, as punchdrop's receiver writes to disk).
//!
//! Invariants: each thread enters its namespace before it opens a socket and ends with its
//! copy; the copy is checked by hash like a punchdrop transfer.

#![allow(unsafe_code)]

use anyhow::{Context as _, bail};
use std::fs::File;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The port router B forwards to host B for the copy.
pub(super) const PORT: u16 = 5201;

/// What one TCP copy showed.
#[derive(Debug, Clone)]
pub struct TcpCopy {
    pub bytes: u64,
    /// From the receiver's accept to its last byte written.
    pub seconds: f64,
    /// The sender's congestion control (the namespace's default, the kernel's, unless one
    /// was asked for).
    pub congestion_control: String,
}

impl TcpCopy {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

/// Move the calling thread into network namespace `ns` (made by `ip netns add`).
pub(super) fn enter(ns: &str) -> anyhow::Result<()> {
    let f = File::open(format!("/var/run/netns/{ns}"))
        .with_context(|| format!("open namespace {ns}"))?;
    // SAFETY: setns on an open namespace descriptor; CLONE_NEWNET moves only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {ns}"));
    }
    Ok(())
}

/// Copy `file` from namespace `from` to `to_addr` (router B's WAN address, forwarded to
/// namespace `to`), saving it as `dst`; the sender uses congestion control `cc` if given.
pub(super) fn copy(
    from: &str,
    to: &str,
    to_addr: Ipv4Addr,
    (file, dst): (&Path, &Path),
    cc: Option<&str>,
) -> anyhow::Result<TcpCopy> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (to, dst) = (to.to_string(), dst.to_path_buf());
    let receiver = std::thread::spawn(move || receive(&to, &dst, ready_tx));
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("the TCP receiver did not start: {:?}", receiver.join()),
    }
    let (from, file, cc) = (from.to_string(), file.to_path_buf(), cc.map(str::to_string));
    let to = SocketAddr::from((to_addr, PORT));
    let sender = std::thread::spawn(move || send(&from, to, &file, cc.as_deref()));
    let (sent, congestion_control) = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the TCP sender panicked"))??;
    let copy = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the TCP receiver panicked"))??;
    if copy.bytes != sent {
        bail!("TCP copy: sent {sent} bytes, {} arrived", copy.bytes);
    }
    Ok(TcpCopy {
        congestion_control,
        ..copy
    })
}

/// The bytes sent and the congestion control that sent them.
fn send(
    ns: &str,
    to: SocketAddr,
    file: &PathBuf,
    cc: Option<&str>,
) -> anyhow::Result<(u64, String)> {
    enter(ns)?;
    let mut f = File::open(file)?;
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))
        .with_context(|| format!("connect to {to} from {ns}"))?;
    if let Some(cc) = cc {
        set_congestion_control(&s, cc)?;
    }
    let used = congestion_control(&s)?;
    let n = std::io::copy(&mut f, &mut s).context("TCP send")?;
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the receiver's close: everything was taken.
    let _ = s.read(&mut [0u8; 1]);
    Ok((n, used))
}

/// `TCP_CONGESTION` on a connected socket (before any data: the kernel switches at once).
fn set_congestion_control(s: &TcpStream, cc: &str) -> anyhow::Result<()> {
    // SAFETY: the name's bytes and length for a valid socket descriptor.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            cc.as_ptr().cast(),
            cc.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("TCP congestion control {cc} (is its module loaded?)"));
    }
    Ok(())
}

/// The socket's `TCP_CONGESTION`.
fn congestion_control(s: &TcpStream) -> anyhow::Result<String> {
    let mut name = [0u8; 16];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: a 16-byte buffer (TCP_CA_NAME_MAX) and its length for a valid descriptor.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("read TCP_CONGESTION");
    }
    let name = &name[..len as usize];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

fn receive(
    ns: &str,
    dst: &Path,
    ready: mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<TcpCopy> {
    let listener = enter(ns).and_then(|()| {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).context("bind the TCP receiver")
    });
    let listener = match listener {
        Ok(l) => {
            let _ = ready.send(Ok(()));
            l
        }
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
            return Err(e);
        }
    };
    let (mut s, _) = listener.accept().context("accept the TCP sender")?;
    let start = Instant::now();
    let bytes = std::io::copy(&mut s, &mut File::create(dst)?).context("TCP receive")?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(TcpCopy {
        bytes,
        seconds,
        congestion_control: String::new(),
    })
}
