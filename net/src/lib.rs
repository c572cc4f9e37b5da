//! Socket helpers shared by `native-peer` and `signalling` (its TURN relay).
//!
//! Both move bulk data over UDP, where the kernel's default 208 KiB receive buffer drops
//! datagrams behind an SCTP window of several MiB; each drop can cost a retransmission
//! timeout (DESIGN.md § Performance measured 39 vs 145 MB/s). [`size_udp_buffers`] asks for
//! more and, where `net.core.rmem_max`/`wmem_max` cap the request and the process may
//! (root, `CAP_NET_ADMIN`), lifts the cap for this socket only with `SO_*BUFFORCE`.

use std::os::fd::AsFd;

/// Socket buffer size both peers and the relay ask for, each direction.
pub const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// Ask for `want` bytes of receive and send buffer on `sock`. Returns what the kernel granted
/// (Linux reports twice the requested size for its bookkeeping). Never fails: a socket keeps
/// whatever it could get.
pub fn size_udp_buffers(sock: impl AsFd, want: usize) -> (usize, usize) {
    use rustix::net::sockopt;
    let fd = sock.as_fd();
    let _ = sockopt::set_socket_recv_buffer_size(fd, want);
    let _ = sockopt::set_socket_send_buffer_size(fd, want);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // Refused (EPERM) without privilege: the plain setting above stays in force.
        if sockopt::socket_recv_buffer_size(fd).unwrap_or(0) < want {
            let _ = sockopt::set_socket_recv_buffer_size_force(fd, want);
        }
        if sockopt::socket_send_buffer_size(fd).unwrap_or(0) < want {
            let _ = sockopt::set_socket_send_buffer_size_force(fd, want);
        }
    }
    (
        sockopt::socket_recv_buffer_size(fd).unwrap_or(0),
        sockopt::socket_send_buffer_size(fd).unwrap_or(0),
    )
}

/// Raise this process's soft limit on open descriptors to its hard limit, and return the
/// limit now in force. A server holds a socket per connection and per relay: the usual soft
/// limit (1024) would refuse connections long before any configured cap.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if setrlimit(Resource::Nofile, limit).is_err() {
            return getrlimit(Resource::Nofile).current;
        }
    }
    limit.current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_raised_and_forced_when_allowed() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = rustix::net::sockopt::socket_recv_buffer_size(&sock).unwrap();
        // Forcing past rmem_max needs CAP_NET_ADMIN: this test needs root (CI runs as root).
        assert!(
            rustix::process::geteuid().is_root(),
            "run as root: forcing socket buffers past net.core.rmem_max needs it"
        );
        let (rcv, snd) = size_udp_buffers(&sock, UDP_BUFFER);
        assert!(rcv > before, "rcv {rcv}, before {before}");
        assert!(
            rcv >= UDP_BUFFER && snd >= UDP_BUFFER,
            "rcv {rcv} snd {snd}, wanted {UDP_BUFFER}"
        );
    }
}
