//! The live TCP socket table from the kernel's `sock_diag` netlink interface
//! instead of `/proc/net/tcp{,6}`. The legacy `TCPDIAG_GETSOCK` dump covers
//! IPv4 and IPv6 in one walk of the kernel's established-connection hash
//! (reading the two /proc files walks it twice, and that walk is most of
//! the agent's CPU time on a large-memory machine), and asks only for the
//! states the baseline uses (LISTEN, ESTABLISHED, and SYN-SENT: a
//! connection attempt that nobody answered yet). Pure parsing is split
//! from the socket so it is tested on bytes; the socket part is Linux-only
//! and used only when observing the live root.

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use vigil_protocol::body::{Addr, Endpoint};

use super::socket_row::{Row, MAX_ENTRIES};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `TCPDIAG_GETSOCK`: the pre-`SOCK_DIAG_BY_FAMILY` request, whose dump
/// is family-unspecified (both IPv4 and IPv6 in one pass).
const TCPDIAG_GETSOCK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_LISTEN: u32 = 10;
/// `struct inet_diag_msg` without attributes.
const DIAG_MSG_LEN: usize = 72;
/// Stop after this many messages (the /proc path has the same bound).
const MAX_ROWS: usize = MAX_ENTRIES * 4;

/// The request: `nlmsghdr` + legacy `struct inet_diag_req` (60 bytes).
pub fn request(seq: u32) -> [u8; NLMSG_HDRLEN + 60] {
    let mut b = [0u8; NLMSG_HDRLEN + 60];
    let len = u32::try_from(b.len()).unwrap_or(0);
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // family, src_len, dst_len, ext: 0; the socket id: all zero; then
    // idiag_states and idiag_dbs.
    let states: u32 = (1 << TCP_ESTABLISHED) | (1 << TCP_SYN_SENT) | (1 << TCP_LISTEN);
    b[NLMSG_HDRLEN + 52..NLMSG_HDRLEN + 56].copy_from_slice(&states.to_ne_bytes());
    b
}

/// What one received datagram held.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    More,
    Done,
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn endpoint(family: u8, addr: &[u8], port: [u8; 2]) -> Option<Endpoint> {
    let port = u16::from_be_bytes(port);
    let addr = match i32::from(family) {
        libc::AF_INET => Addr::V4(addr.get(..4)?.try_into().ok()?),
        libc::AF_INET6 => Addr::V6(addr.get(..16)?.try_into().ok()?),
        _ => return None,
    };
    Some(Endpoint { addr, port })
}

/// Parses one `inet_diag_msg`.
pub fn parse_msg(m: &[u8]) -> Option<Row> {
    if m.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = *m.first()?;
    let state = *m.get(1)?;
    // id: sport(2, BE) dport(2, BE) src(16) dst(16) if(4) cookie(8) at 4..52
    let sport = [*m.get(4)?, *m.get(5)?];
    let dport = [*m.get(6)?, *m.get(7)?];
    let local = endpoint(family, m.get(8..24)?, sport)?;
    let remote = endpoint(family, m.get(24..40)?, dport)?;
    // expires, rqueue, wqueue, uid, inode at 52..72
    let uid = u32_ne(m, 64)?;
    let inode = u64::from(u32_ne(m, 68)?);
    Some(Row {
        local,
        remote,
        state,
        uid,
        inode,
    })
}

/// Parses one datagram of netlink messages into `rows`.
pub fn parse_datagram(mut buf: &[u8], rows: &mut Vec<Row>) -> std::io::Result<Parsed> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_ne(buf, 0)
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(0);
        let kind = u16_ne(buf, 4).unwrap_or(0);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(std::io::Error::other("truncated netlink message"));
        }
        let payload = buf.get(NLMSG_HDRLEN..len).unwrap_or(&[]);
        match kind {
            NLMSG_DONE => return Ok(Parsed::Done),
            NLMSG_ERROR => {
                let errno = u32_ne(payload, 0).map_or(0, |e| i32::from_ne_bytes(e.to_ne_bytes()));
                return Err(std::io::Error::from_raw_os_error(errno.saturating_neg()));
            }
            _ => {
                if let Some(r) = parse_msg(payload) {
                    if rows.len() < MAX_ROWS {
                        rows.push(r);
                    }
                }
            }
        }
        // Messages are 4-byte aligned.
        let step = (len + 3) & !3;
        buf = buf.get(step..).unwrap_or(&[]);
    }
    Ok(Parsed::More)
}

/// Listening and established TCP sockets (IPv4 and IPv6) of this machine.
pub fn tcp() -> std::io::Result<Vec<Row>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    let result = (|| -> std::io::Result<Vec<Row>> {
        let req = request(1);
        sendto(fd, &req, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        let mut rows = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = recv(fd, &mut buf, MsgFlags::empty())?;
            if n == 0 {
                return Err(std::io::Error::other("netlink closed"));
            }
            if parse_datagram(buf.get(..n).unwrap_or(&[]), &mut rows)? == Parsed::Done {
                return Ok(rows);
            }
        }
    })();
    let _ = nix::unistd::close(fd);
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn msg(
        family: u8,
        state: u8,
        local: &[u8],
        lport: u16,
        remote: &[u8],
        rport: u16,
        uid: u32,
        inode: u32,
    ) -> Vec<u8> {
        let mut m = vec![0u8; DIAG_MSG_LEN];
        m[0] = family;
        m[1] = state;
        m[4..6].copy_from_slice(&lport.to_be_bytes());
        m[6..8].copy_from_slice(&rport.to_be_bytes());
        m[8..8 + local.len()].copy_from_slice(local);
        m[24..24 + remote.len()].copy_from_slice(remote);
        m[64..68].copy_from_slice(&uid.to_ne_bytes());
        m[68..72].copy_from_slice(&inode.to_ne_bytes());
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(NLMSG_HDRLEN + m.len()).unwrap().to_ne_bytes());
        out.extend_from_slice(&20u16.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&m);
        out
    }

    #[test]
    fn parses_both_families_and_stops_at_done() {
        let mut d = msg(
            libc::AF_INET as u8,
            10,
            &[127, 0, 0, 1],
            22,
            &[0; 4],
            0,
            0,
            4242,
        );
        let v6_local = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let v6_remote = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        d.extend(msg(
            libc::AF_INET6 as u8,
            1,
            &v6_local,
            443,
            &v6_remote,
            51000,
            1000,
            7,
        ));
        let mut rows = Vec::new();
        assert_eq!(parse_datagram(&d, &mut rows).unwrap(), Parsed::More);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].local,
            Endpoint {
                addr: Addr::V4([127, 0, 0, 1]),
                port: 22
            }
        );
        assert_eq!((rows[0].state, rows[0].inode), (10, 4242));
        assert_eq!(
            rows[1].remote,
            Endpoint {
                addr: Addr::V6(v6_remote),
                port: 51000
            }
        );
        assert_eq!((rows[1].uid, rows[1].inode), (1000, 7));
        let mut done = Vec::new();
        done.extend_from_slice(&20u32.to_ne_bytes());
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&[0; 14]);
        assert_eq!(parse_datagram(&done, &mut rows).unwrap(), Parsed::Done);
        // A truncated message is an error, not a panic.
        assert!(parse_datagram(&d[..30], &mut rows).is_err());
        let mut err = Vec::new();
        err.extend_from_slice(&20u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-13i32).to_ne_bytes());
        assert_eq!(
            parse_datagram(&err, &mut rows).unwrap_err().raw_os_error(),
            Some(13)
        );
    }
}
