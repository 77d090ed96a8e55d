//! The UDP socket: bind, receive in batches, count what the kernel dropped.
//!
//! The receive loop runs on its own OS thread and never waits for downstream
//! work: it reads a batch of datagrams, parses them, and hands the batch over a
//! channel. If it stalled, the kernel would drop datagrams silently; Butler SOS
//! loses them without a trace. On Linux we read with `recvmmsg` (up to
//! [`BATCH`] datagrams per system call) and ask the kernel for two ancillary
//! values with each datagram: `SO_RXQ_OVFL`, the running count of datagrams it
//! dropped because the socket buffer was full (exposed as
//! `whosin_datagrams_dropped_total`), and `SO_TIMESTAMPNS`, the time the
//! datagram arrived, which is more exact than the time we got round to reading it.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use socket2::{Domain, Protocol, Socket, Type};

/// Datagrams read per system call.
pub const BATCH: usize = 64;

/// Receive buffer we ask the kernel for.
pub const RECV_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// How often the receive loop looks up from a quiet socket to check for shutdown.
const POLL: Duration = Duration::from_millis(100);

/// After a batch that did not fill up, wait this long before reading again so
/// that datagrams gather in the kernel buffer: one system call and one hand-over
/// then carry many datagrams instead of one. Under load this cuts the CPU cost
/// per datagram several times; the price is at most this much added latency,
/// far below anything a person watching a dashboard can see. The 8 MiB buffer
/// holds over 20,000 typical datagrams, several seconds of the heaviest load.
const COALESCE: Duration = Duration::from_micros(500);

/// Binds the socket and asks for a large receive buffer; returns it with the
/// buffer size the kernel granted.
pub fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, usize)> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]:9997` should also take IPv4 senders, whatever the OS default.
        let _ = sock.set_only_v6(false);
    }
    grow_buffer(&sock);
    sock.bind(&addr.into())?;
    sock.set_read_timeout(Some(POLL))?;
    #[cfg(target_os = "linux")]
    linux::enable_ancillary(&sock);
    let granted = sock.recv_buffer_size().unwrap_or(0);
    Ok((sock.into(), granted))
}

fn grow_buffer(sock: &Socket) {
    #[cfg(target_os = "linux")]
    {
        // SO_RCVBUFFORCE passes net.core.rmem_max when we may (root or
        // CAP_NET_ADMIN); otherwise the plain request is capped by rmem_max.
        if linux::force_buffer(sock, RECV_BUFFER_BYTES).is_ok() {
            return;
        }
    }
    let _ = sock.set_recv_buffer_size(RECV_BUFFER_BYTES);
}

/// One datagram as read from the socket.
pub struct Datagram<'a> {
    /// The payload (at most the buffer size; see `truncated`).
    pub data: &'a [u8],
    /// The payload was longer than the buffer.
    pub truncated: bool,
    /// The sender.
    pub from: Option<SocketAddr>,
    /// When it arrived.
    pub received_at: Timestamp,
}

/// Reads datagrams in batches until `stop` is set, calling `on_batch` with each
/// batch and `on_dropped` with the number of datagrams the kernel reports dropped
/// since the previous call. `max_len` is the longest datagram kept whole.
pub fn receive_loop(
    sock: &UdpSocket,
    max_len: usize,
    stop: &AtomicBool,
    mut on_batch: impl FnMut(&[Datagram<'_>]),
    mut on_dropped: impl FnMut(u64),
) -> io::Result<()> {
    // One byte more than the limit tells a datagram at the limit from a longer one.
    let buf_len = (max_len + 1).min(65_536);
    #[cfg(target_os = "linux")]
    {
        let mut rx = linux::Receiver::new(buf_len);
        let mut drops = linux::Drops::default();
        let mut error_at: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            match rx.recv(sock) {
                Ok(n) => {
                    let (batch, d) = rx.datagrams(n);
                    if let Some(d) = d {
                        drops.report(d, &mut on_dropped);
                    }
                    on_batch(&batch);
                    if n < BATCH {
                        std::thread::sleep(COALESCE);
                    }
                }
                Err(e) if is_timeout(&e) => {
                    // A datagram carries the drop count as it was when the
                    // datagram was queued, so the drops at the very end of a
                    // flood (after the last datagram that found room) would
                    // wait for the next datagram to be counted. Once the
                    // socket has been quiet for a read timeout, ask the
                    // socket itself.
                    if let Some(d) = linux::socket_drops(sock) {
                        drops.report(d, &mut on_dropped);
                    }
                }
                Err(e) => backoff(&e, &mut error_at),
            }
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = &mut on_dropped;
        let mut buf = vec![0u8; buf_len];
        let mut error_at: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let d = Datagram {
                        data: &buf[..n.min(buf_len)],
                        truncated: n >= buf_len,
                        from: Some(from),
                        received_at: Timestamp::now(),
                    };
                    on_batch(std::slice::from_ref(&d));
                }
                Err(e) if is_timeout(&e) => {}
                // Windows reports an ICMP port-unreachable for an earlier send as an error here.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                Err(e) => backoff(&e, &mut error_at),
            }
        }
        Ok(())
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Logs an unexpected socket error at most every 10 s and pauses briefly, so a
/// persistent error neither spins a core nor floods the log.
fn backoff(e: &io::Error, last: &mut Option<Instant>) {
    if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
        tracing::warn!("UDP receive failed, retrying: {e}");
        *last = Some(Instant::now());
    }
    std::thread::sleep(Duration::from_millis(10));
}

/// Whether `ip` may send, given `allowed` (empty allows everyone).
pub fn source_allowed(allowed: &[ipnet::IpNet], ip: IpAddr) -> bool {
    if allowed.is_empty() {
        return true;
    }
    // A dual-stack socket shows IPv4 senders as ::ffff:a.b.c.d.
    let ip = ip.to_canonical();
    allowed.iter().any(|n| n.contains(&ip))
}

/// Set by the daemon's shutdown; read by the receive loop.
pub type StopFlag = Arc<AtomicBool>;

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::mem::{size_of, zeroed};
    use std::os::fd::AsRawFd;

    const CMSG_BYTES: usize = 64;

    fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: a plain setsockopt with a pointer to a live i32 and its size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const i32).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn force_buffer(sock: &Socket, bytes: usize) -> io::Result<()> {
        let n = i32::try_from(bytes).unwrap_or(i32::MAX);
        setsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, n)
    }

    pub fn enable_ancillary(sock: &Socket) {
        let fd = sock.as_raw_fd();
        if let Err(e) = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1) {
            tracing::warn!("cannot count kernel drops (SO_RXQ_OVFL): {e}");
        }
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1);
    }

    /// The socket's running drop count, as far as it has been reported. It
    /// comes from two places (each datagram's `SO_RXQ_OVFL`, and
    /// `SO_MEMINFO` when the socket is quiet) that may arrive out of order,
    /// so it only moves forward.
    #[derive(Default)]
    pub struct Drops {
        last: u32,
    }

    impl Drops {
        /// Reports what `count` (the kernel's wrapping u32) adds.
        pub fn report(&mut self, count: u32, on_dropped: &mut impl FnMut(u64)) {
            let delta = count.wrapping_sub(self.last);
            if delta > 0 && delta < u32::MAX / 2 {
                self.last = count;
                on_dropped(u64::from(delta));
            }
        }
    }

    /// `SO_MEMINFO`: 55 in the generic socket options (x86, ARM, RISC-V);
    /// the libc crate has its offsets but not the option itself. Other
    /// architectures number it their own way: there it is not asked for.
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    ))]
    const SO_MEMINFO: Option<i32> = Some(55);
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )))]
    const SO_MEMINFO: Option<i32> = None;

    /// The socket's drop count now (the counter `SO_RXQ_OVFL` reports), from
    /// `SO_MEMINFO` (Linux 4.12 and later); `None` where it is not known.
    pub fn socket_drops(sock: &UdpSocket) -> Option<u32> {
        const VARS: usize = libc::SK_MEMINFO_DROPS as usize + 1;
        let mut info = [0u32; VARS];
        let mut len = size_of::<[u32; VARS]>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, a live
        // array of that size, and sets `len` to what it wrote.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_MEMINFO?,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        (rc == 0 && len as usize >= size_of::<[u32; VARS]>())
            .then(|| info[libc::SK_MEMINFO_DROPS as usize])
    }

    /// Buffers for one `recvmmsg` call. The headers point into the other
    /// vectors, which are allocated once and never resized.
    pub struct Receiver {
        bufs: Vec<u8>,
        buf_len: usize,
        iovecs: Vec<libc::iovec>,
        addrs: Vec<libc::sockaddr_storage>,
        cmsgs: Vec<[u64; CMSG_BYTES / 8]>,
        hdrs: Vec<libc::mmsghdr>,
    }

    // SAFETY: the raw pointers in the headers point only into the Receiver's
    // own heap buffers; it is used by one thread at a time.
    unsafe impl Send for Receiver {}

    impl Receiver {
        pub fn new(buf_len: usize) -> Self {
            let mut r = Receiver {
                bufs: vec![0u8; buf_len * BATCH],
                buf_len,
                iovecs: Vec::with_capacity(BATCH),
                // SAFETY: sockaddr_storage and mmsghdr are plain C structs for
                // which all-zero bytes are a valid value.
                addrs: vec![unsafe { zeroed() }; BATCH],
                cmsgs: vec![[0u64; CMSG_BYTES / 8]; BATCH],
                hdrs: Vec::with_capacity(BATCH),
            };
            for i in 0..BATCH {
                r.iovecs.push(libc::iovec {
                    iov_base: r.bufs[i * buf_len..].as_mut_ptr().cast(),
                    iov_len: buf_len,
                });
            }
            for i in 0..BATCH {
                // SAFETY: as above, all-zero is a valid mmsghdr.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_iov = &mut r.iovecs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = (&mut r.addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_control = r.cmsgs[i].as_mut_ptr().cast();
                r.hdrs.push(h);
            }
            r
        }

        /// Blocks until at least one datagram arrives (or the read timeout),
        /// then takes every datagram already queued, up to [`BATCH`].
        pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
            for h in self.hdrs.iter_mut() {
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_controllen = CMSG_BYTES as _;
                h.msg_hdr.msg_flags = 0;
                h.msg_len = 0;
            }
            // SAFETY: every header points at live buffers of the stated sizes.
            let n = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }

        /// The first `n` datagrams of the last call, and the kernel's drop counter.
        pub fn datagrams(&self, n: usize) -> (Vec<Datagram<'_>>, Option<u32>) {
            let mut drops = None;
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let h = &self.hdrs[i];
                let len = (h.msg_len as usize).min(self.buf_len);
                let mut received_at = None;
                // SAFETY: the kernel filled msg_control up to msg_controllen;
                // the CMSG_* macros walk exactly that region.
                unsafe {
                    let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    while !c.is_null() {
                        let level = (*c).cmsg_level;
                        let ty = (*c).cmsg_type;
                        let data = libc::CMSG_DATA(c);
                        if level == libc::SOL_SOCKET && ty == libc::SO_RXQ_OVFL {
                            drops = Some(std::ptr::read_unaligned(data.cast::<u32>()));
                        } else if level == libc::SOL_SOCKET && ty == libc::SCM_TIMESTAMPNS {
                            let ts = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                            received_at = Timestamp::new(ts.tv_sec as i64, ts.tv_nsec as i32).ok();
                        }
                        c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                    }
                }
                out.push(Datagram {
                    data: &self.bufs[i * self.buf_len..i * self.buf_len + len],
                    truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0
                        || h.msg_len as usize >= self.buf_len,
                    from: sockaddr_to_std(&self.addrs[i]),
                    received_at: received_at.unwrap_or_else(Timestamp::now),
                });
            }
            (out, drops)
        }
    }

    fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match s.ss_family as i32 {
            libc::AF_INET => {
                // SAFETY: the family says this storage holds a sockaddr_in.
                let a: &libc::sockaddr_in =
                    unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this storage holds a sockaddr_in6.
                let a: &libc::sockaddr_in6 =
                    unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::new(ip.into(), u16::from_be(a.sin6_port)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_sources_match_ips_cidrs_and_mapped_v4() {
        let nets: Vec<ipnet::IpNet> =
            vec!["10.0.0.0/24".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(source_allowed(&[], "8.8.8.8".parse().unwrap()));
        assert!(source_allowed(&nets, "10.0.0.77".parse().unwrap()));
        assert!(source_allowed(&nets, "::ffff:10.0.0.77".parse().unwrap()));
        assert!(source_allowed(&nets, "::1".parse().unwrap()));
        assert!(!source_allowed(&nets, "10.0.1.1".parse().unwrap()));
    }

    #[test]
    fn batches_arrive_with_sender_time_and_truncation() {
        let (sock, granted) = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(granted > 0);
        let addr = sock.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"hello", addr).unwrap();
        tx.send_to(&[b'x'; 100], addr).unwrap();
        tx.send_to(&[b'y'; 10], addr).unwrap();
        let stop = AtomicBool::new(false);
        let mut got: Vec<(Vec<u8>, bool, Option<SocketAddr>)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        receive_loop(
            &sock,
            10,
            &stop,
            |batch| {
                for d in batch {
                    assert!(d.received_at > Timestamp::UNIX_EPOCH);
                    got.push((d.data.to_vec(), d.truncated, d.from));
                }
                if got.len() >= 3 || Instant::now() > deadline {
                    stop.store(true, Ordering::Relaxed);
                }
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, b"hello");
        assert!(!got[0].1);
        assert!(
            got[1].1,
            "a 100-byte datagram over a 10-byte limit is truncated"
        );
        assert!(!got[2].1, "exactly at the limit is whole");
        assert_eq!(got[0].2, Some(tx.local_addr().unwrap()));
    }

    /// The drops at the end of a flood are counted although no datagram
    /// queued after them carries the count: here every datagram that found
    /// room was queued before the first drop.
    #[cfg(target_os = "linux")]
    #[test]
    fn drops_after_the_last_datagram_that_found_room_are_counted() {
        use std::sync::atomic::AtomicU64;
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        // The smallest buffer the kernel allows: a few datagrams.
        sock.set_recv_buffer_size(1).unwrap();
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        sock.set_read_timeout(Some(POLL)).unwrap();
        linux::enable_ancillary(&sock);
        let sock: UdpSocket = sock.into();
        let addr = sock.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        const SENT: u64 = 300;
        for _ in 0..SENT {
            tx.send_to(&[b'z'; 600], addr).unwrap();
        }
        let stop = AtomicBool::new(false);
        let received = AtomicU64::new(0);
        let dropped = AtomicU64::new(0);
        let settled = || received.load(Ordering::Relaxed) + dropped.load(Ordering::Relaxed) >= SENT;
        std::thread::scope(|s| {
            // Poll with a deadline: stop once everything is accounted for.
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !settled() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                stop.store(true, Ordering::Relaxed);
            });
            receive_loop(
                &sock,
                1000,
                &stop,
                |batch| {
                    received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                },
                |n| {
                    dropped.fetch_add(n, Ordering::Relaxed);
                },
            )
            .unwrap();
        });
        let (r, d) = (received.into_inner(), dropped.into_inner());
        assert!(r > 0 && d > 0, "received {r}, dropped {d}");
        assert_eq!(r + d, SENT, "received {r} + dropped {d}");
    }
}
