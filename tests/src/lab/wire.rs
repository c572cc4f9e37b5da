//! A userspace "netem": a link between two namespaces made of two TAP devices and threads in
//! the test process that copy Ethernet frames across with a fixed delay and random loss.
//!
//! This machine's kernel has no `sch_netem` (tc answers "qdisc kind is unknown"), and CI runs
//! on the same kind of machine, so delay and loss cannot come from tc. TAP file descriptors
//! stay valid when their device moves to another namespace, so the devices are created here,
//! moved into place by the lab, and served from here.
//!
//! Invariants: like netem on an interface, only frames leaving through the first device
//! (the router's WAN side) are delayed and dropped; frames keep their order (one constant
//! delay, FIFO); the threads stop when the [`Wire`] is dropped (they poll with a short
//! timeout) or the devices disappear.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Delay and loss applied to what a router sends out of its WAN side.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impair {
    pub delay_ms: u32,
    /// Fraction of frames dropped, 0.0–1.0.
    pub loss: f64,
}

impl Impair {
    pub fn is_none(&self) -> bool {
        self.delay_ms == 0 && self.loss == 0.0
    }
}

/// A running link; dropping it stops the copying (the devices go with their namespaces).
#[derive(Debug)]
pub struct Wire {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Create TAP device `name` (in the current namespace) and return its file.
fn open_tap(name: &str) -> std::io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // struct ifreq: 16 bytes of name, then a short of flags (the rest unused here).
    let mut req = [0u8; 40];
    assert!(name.len() < 16, "interface name too long: {name}");
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq (40 bytes on Linux), which `req`
    // is, and the descriptor is an open /dev/net/tun.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, req.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Wait up to `timeout` for `f` to be readable.
fn readable(f: &File, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for an open descriptor.
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    r > 0 && p.revents & libc::POLLIN != 0
}

impl Wire {
    /// Create TAP devices `a` and `b` in the current namespace, joined through `impair` for
    /// frames from `a` to `b`.
    pub fn new(a: &str, b: &str, impair: Impair) -> std::io::Result<Self> {
        let ta = open_tap(a)?;
        let tb = open_tap(b)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // Like netem on the router's WAN interface: only what leaves through `a` is impaired.
        threads.extend(direction(
            ta.try_clone()?,
            tb.try_clone()?,
            impair,
            stop.clone(),
        ));
        threads.extend(direction(tb, ta, Impair::default(), stop.clone()));
        Ok(Self { stop, threads })
    }
}

/// Copy frames `from` → `to`: a reader that drops and timestamps, a writer that waits out the
/// delay.
fn direction(
    mut from: File,
    mut to: File,
    impair: Impair,
    stop: Arc<AtomicBool>,
) -> [std::thread::JoinHandle<()>; 2] {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let delay = Duration::from_millis(u64::from(impair.delay_ms));
    let stop_r = stop.clone();
    let reader = std::thread::spawn(move || {
        use rand::Rng as _;
        let mut rng = rand::thread_rng();
        let mut buf = vec![0u8; 65536];
        while !stop_r.load(Ordering::Relaxed) {
            if !readable(&from, Duration::from_millis(50)) {
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break, // the device is gone
            };
            if impair.loss > 0.0 && rng.gen_bool(impair.loss) {
                continue;
            }
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    let writer = std::thread::spawn(move || {
        loop {
            let (due, frame) = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(x) => x,
                Err(mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {
                    continue;
                }
                Err(_) => break,
            };
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            // A full or vanished device drops the frame, as a wire would.
            let _ = to.write(&frame);
        }
    });
    [reader, writer]
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
