//! One socket as the kernel reports it, from a /proc/net table line
//! (`sockets`) or a sock_diag message (`sock_diag`), and the bound on one
//! table read. Shared by the two sources so that neither depends on the
//! other.

use vigil_protocol::body::Endpoint;

/// Most distinct entries kept from one table read.
pub const MAX_ENTRIES: usize = 4096;

/// One row of /proc/net/{tcp,udp}{,6}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub local: Endpoint,
    pub remote: Endpoint,
    pub state: u8,
    pub uid: u32,
    pub inode: u64,
}
