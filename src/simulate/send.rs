//! Putting the simulator's datagrams on the wire, a batch at a time.
//!
//! On one core the simulator spent half its time in the kernel, sending, and
//! could not offer the rates whosin is measured at. So the socket is
//! connected (no route lookup per datagram) and on Linux a batch goes out in
//! one `sendmmsg` call instead of one `sendto` per datagram.

use std::net::{SocketAddr, UdpSocket};

use anyhow::Context;

/// Datagrams per batch: enough to share a system call's cost, few enough
/// that pacing stays within a fraction of a millisecond at 100,000/s.
pub const BATCH: usize = 64;

/// Datagrams in one buffer: no allocation per datagram once it has grown.
#[derive(Default)]
pub struct Batch {
    text: String,
    ends: Vec<usize>,
}

impl Batch {
    /// Empties the batch, keeping its room.
    pub fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    /// Adds a datagram.
    pub fn push(&mut self, datagram: &str) {
        self.text.push_str(datagram);
        self.ends.push(self.text.len());
    }

    /// How many datagrams it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Datagram `i`.
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// A UDP socket connected to the target.
pub struct Sender {
    sock: UdpSocket,
    #[cfg(target_os = "linux")]
    iovecs: Vec<libc::iovec>,
    #[cfg(target_os = "linux")]
    headers: Vec<libc::mmsghdr>,
}

impl Sender {
    /// A socket that sends to `target`.
    pub fn connect(target: SocketAddr) -> anyhow::Result<Self> {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let sock = UdpSocket::bind(bind).context("opening a UDP socket to send from")?;
        sock.connect(target)
            .with_context(|| format!("sending to {target}"))?;
        Ok(Self {
            sock,
            #[cfg(target_os = "linux")]
            iovecs: Vec::new(),
            #[cfg(target_os = "linux")]
            headers: Vec::new(),
        })
    }

    /// Sends every datagram of `batch` and tells `done` for each, in order,
    /// whether it went out (a datagram the kernel refused is not retried:
    /// the report leaves it out of what whosin must show).
    #[cfg(not(target_os = "linux"))]
    pub fn send(&mut self, batch: &Batch, mut done: impl FnMut(usize, std::io::Result<()>)) {
        for i in 0..batch.len() {
            done(i, self.sock.send(batch.get(i).as_bytes()).map(|_| ()));
        }
    }

    /// Sends every datagram of `batch` and tells `done` for each, in order,
    /// whether it went out (a datagram the kernel refused is not retried:
    /// the report leaves it out of what whosin must show).
    #[cfg(target_os = "linux")]
    pub fn send(&mut self, batch: &Batch, mut done: impl FnMut(usize, std::io::Result<()>)) {
        use std::os::fd::AsRawFd;
        let n = batch.len();
        self.iovecs.clear();
        self.iovecs.extend((0..n).map(|i| {
            let d = batch.get(i).as_bytes();
            libc::iovec {
                iov_base: d.as_ptr().cast_mut().cast(),
                iov_len: d.len(),
            }
        }));
        self.headers.clear();
        for iov in &mut self.iovecs {
            // SAFETY: an all-zero mmsghdr is valid (no name, no control).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            self.headers.push(h);
        }
        let mut at = 0;
        while at < n {
            let rest = &mut self.headers[at..];
            // SAFETY: the headers point at iovecs that point into `batch`,
            // all alive and unchanged for the call; the kernel only reads
            // them (and writes each header's msg_len).
            let sent = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    0,
                )
            };
            if sent < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram of the rest failed; the others may go.
                done(at, Err(e));
                at += 1;
            } else {
                for i in at..at + sent as usize {
                    done(i, Ok(()));
                }
                at += (sent as usize).max(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiving socket and a sender connected to it.
    fn pair() -> (UdpSocket, Sender) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let tx = Sender::connect(rx.local_addr().unwrap()).unwrap();
        (rx, tx)
    }

    #[test]
    fn a_batch_arrives_whole_and_in_order() {
        let (rx, mut tx) = pair();
        let mut batch = Batch::default();
        let want: Vec<String> = (0..100)
            .map(|i| format!("datagram {i} {}", "x".repeat(i)))
            .collect();
        for d in &want {
            batch.push(d);
        }
        let mut ok = Vec::new();
        tx.send(&batch, |i, sent| ok.push((i, sent.is_ok())));
        assert_eq!(ok, (0..100).map(|i| (i, true)).collect::<Vec<_>>());
        let mut buf = [0u8; 512];
        for d in &want {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], d.as_bytes());
        }
    }

    #[test]
    fn a_datagram_the_kernel_refuses_is_reported_and_the_rest_still_go() {
        let (rx, mut tx) = pair();
        let mut batch = Batch::default();
        batch.push("first");
        // Larger than any UDP datagram can be.
        batch.push(&"x".repeat(70_000));
        batch.push("third");
        let mut ok = Vec::new();
        tx.send(&batch, |i, sent| ok.push((i, sent.is_ok())));
        assert_eq!(ok, [(0, true), (1, false), (2, true)]);
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"first");
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"third");
    }
}
