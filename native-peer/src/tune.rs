//! A webrtc-rs runtime that sizes UDP socket buffers for bulk transfer.
//!
//! webrtc-rs has no socket-buffer option, and the kernel's default 208 KiB receive buffer
//! drops datagrams behind SCTP's 1 MiB+ window; each loss can cost a retransmission timeout,
//! which collapsed throughput to 20–40 MB/s in measurements (see DESIGN §7). Everything is
//! delegated to [`TokioRuntime`] except [`Runtime::wrap_udp_socket`], which first raises
//! `SO_RCVBUF`/`SO_SNDBUF`. Where `net.core.rmem_max` caps the request and we run as root,
//! the `*BUFFORCE` variants lift the cap for our sockets only.

use socket2::SockRef;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// Socket buffer size asked for (both directions).
pub const UDP_BUFFER: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub struct TunedRuntime {
    inner: TokioRuntime,
    buffer: usize,
}

impl TunedRuntime {
    pub fn new(buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: TokioRuntime,
            buffer,
        })
    }
}

/// Set a socket buffer, forcing past the sysctl cap when allowed. Returns what the kernel
/// granted (Linux reports twice the requested size for its bookkeeping).
pub(crate) fn size_buffers(sock: &std::net::UdpSocket, want: usize) -> (usize, usize) {
    let s = SockRef::from(sock);
    let _ = s.set_recv_buffer_size(want);
    let _ = s.set_send_buffer_size(want);
    #[cfg(target_os = "linux")]
    {
        if s.recv_buffer_size().unwrap_or(0) < want {
            force(sock, libc::SO_RCVBUFFORCE, want);
        }
        if s.send_buffer_size().unwrap_or(0) < want {
            force(sock, libc::SO_SNDBUFFORCE, want);
        }
    }
    (
        s.recv_buffer_size().unwrap_or(0),
        s.send_buffer_size().unwrap_or(0),
    )
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn force(sock: &std::net::UdpSocket, opt: libc::c_int, want: usize) {
    use std::os::fd::AsRawFd as _;
    let v: libc::c_int = want.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: valid fd owned by `sock` for the duration of the call; the option value is a
    // c_int on the stack whose size we pass. Failure (EPERM when not root) is ignored: the
    // plain setting above stays in force.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl Runtime for TunedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let (rcv, snd) = size_buffers(&socket, self.buffer);
        tracing::debug!(rcvbuf = rcv, sndbuf = snd, "udp socket buffers");
        self.inner.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "punchdrop-tuned-tokio"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_raised_above_the_kernel_default() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = SockRef::from(&sock).recv_buffer_size().unwrap();
        let (rcv, snd) = size_buffers(&sock, UDP_BUFFER);
        // Unprivileged and capped by rmem_max we still get at least the default; as root
        // (CI, these tests) the force path must reach the full size.
        assert!(rcv >= before);
        if unsafe_is_root() {
            assert!(
                rcv >= UDP_BUFFER && snd >= UDP_BUFFER,
                "rcv {rcv} snd {snd}"
            );
        }
    }

    fn unsafe_is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
    }
}
