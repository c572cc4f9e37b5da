//! A webrtc-rs runtime that sizes UDP socket buffers for bulk transfer.
//!
//! webrtc-rs has no socket-buffer option, and the kernel's default 208 KiB receive buffer
//! drops datagrams behind SCTP's 1 MiB+ window; each loss can cost a retransmission timeout,
//! which collapsed throughput to 20–40 MB/s in measurements (see DESIGN §7). Everything is
//! delegated to [`TokioRuntime`] except [`Runtime::wrap_udp_socket`], which first raises
//! `SO_RCVBUF`/`SO_SNDBUF` ([`net::size_udp_buffers`], shared with the TURN server).

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
        let (rcv, snd) = net::size_udp_buffers(&socket, self.buffer);
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
