//! A VMM's network devices and their traffic, without asking the VMM or
//! libvirt: the tap devices it holds (each `/dev/net/tun` fd's fdinfo
//! names its interface on an `iff:` line) and the macvtap devices it has
//! open (`/dev/tap<ifindex>`), counted by the kernel in
//! `/sys/class/net/<dev>/statistics`.
//!
//! The counters are the host's view of the device: what the host
//! *received* on a tap is what the guest *sent*. [`NetCounters::guest_view`]
//! turns them round, as virt-top and libvirt's `domifstat` show them.
//!
//! Limits: sysfs shows the reader's network namespace, so the devices of a
//! VMM in another one are not found (and said so); vhost-net moves the
//! packets in the kernel but the tap's counters still count them; a
//! VMM that passes its tap fds to a helper process has them counted with
//! that process.

use crate::kept::KeptFile;
use crate::procfs::{ProcRoot, Read, Skip};
use std::io;
use std::path::{Path, PathBuf};

/// How a VMM reaches a network device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum NetKind {
    /// A tun/tap device (`/dev/net/tun`).
    Tap,
    /// A macvtap device (`/dev/tap<ifindex>`).
    Macvtap,
}

/// One network device a VMM holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// The interface name (`vnet0`, `macvtap0`).
    pub name: String,
    /// How the VMM holds it.
    pub kind: NetKind,
}

/// A device's counters, as the host's side of it counts them.
///
/// All are cumulative since the device was created, from the files of the
/// same names in `statistics/`; [`guest_view`](Self::guest_view) swaps the
/// `rx_` and `tx_` sides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
    /// Packets dropped on transmit.
    pub tx_dropped: u64,
}

impl NetCounters {
    /// The same counters from the guest's side: its receive is the
    /// device's transmit.
    pub fn guest_view(self) -> NetCounters {
        NetCounters {
            rx_bytes: self.tx_bytes,
            rx_packets: self.tx_packets,
            rx_dropped: self.tx_dropped,
            tx_bytes: self.rx_bytes,
            tx_packets: self.rx_packets,
            tx_dropped: self.rx_dropped,
        }
    }
}

/// The statistics files read, in [`NetCounters`]' field order.
const FILES: [&str; 6] = [
    "rx_bytes",
    "rx_packets",
    "rx_dropped",
    "tx_bytes",
    "tx_packets",
    "tx_dropped",
];

/// The interface name on the `iff:` line of a tun fd's fdinfo (absent
/// while the fd is not attached to a device).
pub fn tun_iff(fdinfo: &str) -> Option<&str> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("iff:"))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// `/dev/tap<N>` -> N, the macvtap device's ifindex.
pub fn macvtap_ifindex(link: &str) -> Option<u32> {
    link.strip_prefix("/dev/tap")?.parse().ok()
}

/// The network devices process `pid` holds, from its fd table (one
/// `readlink` per fd, an fdinfo read per tun fd); sorted, each once.
/// Needs ptrace-read rights over the process: a process gone or closed
/// to the caller is a `NotFound` or `PermissionDenied` error.
pub fn devices(proc_root: &ProcRoot, sys_root: &Path, pid: u32) -> io::Result<Vec<NetDevice>> {
    let fds = match proc_root.list_numeric(format!("{pid}/fd")) {
        Read::Ok(f) => f,
        Read::Skip(Skip::Gone) => return Err(io::ErrorKind::NotFound.into()),
        Read::Skip(_) => return Err(io::ErrorKind::PermissionDenied.into()),
        Read::Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for fd in fds {
        let Read::Ok(link) = proc_root.read_link(format!("{pid}/fd/{fd}")) else {
            continue;
        };
        if link == "/dev/net/tun" {
            if let Some(n) = proc_root
                .read_string(format!("{pid}/fdinfo/{fd}"))
                .ok()
                .as_deref()
                .and_then(tun_iff)
            {
                out.push(NetDevice {
                    name: n.to_string(),
                    kind: NetKind::Tap,
                });
            }
        } else if let Some(ifindex) = macvtap_ifindex(&link) {
            if let Some(name) = name_of_ifindex(sys_root, ifindex) {
                out.push(NetDevice {
                    name,
                    kind: NetKind::Macvtap,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    // A multiqueue tap has one fd per queue.
    out.dedup();
    Ok(out)
}

/// The interface with index `ifindex` in this network namespace.
fn name_of_ifindex(sys_root: &Path, ifindex: u32) -> Option<String> {
    std::fs::read_dir(sys_root.join("class/net"))
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("ifindex"))
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
                == Some(ifindex)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// A device's statistics files, kept open: six `pread`s a read.
#[derive(Debug)]
pub struct NetFiles {
    files: Vec<KeptFile>,
}

impl NetFiles {
    /// Open the counters of `dev` under `<sys_root>/class/net`; a device
    /// not in this network namespace (or gone) is `NotFound`.
    pub fn open(sys_root: &Path, dev: &str) -> io::Result<NetFiles> {
        let dir: PathBuf = sys_root.join("class/net").join(dev).join("statistics");
        let files = FILES
            .iter()
            .map(|f| KeptFile::open(&dir.join(f), 32))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(NetFiles { files })
    }

    /// The counters now; an unparsable file is `InvalidData`.
    pub fn read(&mut self) -> io::Result<NetCounters> {
        let mut v = [0u64; 6];
        for (slot, f) in v.iter_mut().zip(&mut self.files) {
            let bytes = f.read()?;
            *slot = std::str::from_utf8(bytes)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: not a counter", f.path().display()),
                    )
                })?;
        }
        Ok(NetCounters {
            rx_bytes: v[0],
            rx_packets: v[1],
            rx_dropped: v[2],
            tx_bytes: v[3],
            tx_packets: v[4],
            tx_dropped: v[5],
        })
    }

    /// How many files this keeps open (for the tracker's budget).
    pub(crate) fn open_files(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tun_fdinfo_and_macvtap_links() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t26\nino:\t1047\niff:\ttap-web\n";
        assert_eq!(tun_iff(info), Some("tap-web"));
        assert_eq!(tun_iff("pos:\t0\niff:\t\n"), None);
        assert_eq!(tun_iff("pos:\t0\n"), None);
        assert_eq!(macvtap_ifindex("/dev/tap12"), Some(12));
        assert_eq!(macvtap_ifindex("/dev/tapx"), None);
        assert_eq!(macvtap_ifindex("/dev/net/tun"), None);
    }

    #[test]
    fn guest_view_turns_the_counters_round() {
        let host = NetCounters {
            rx_bytes: 1,
            rx_packets: 2,
            rx_dropped: 3,
            tx_bytes: 4,
            tx_packets: 5,
            tx_dropped: 6,
        };
        let g = host.guest_view();
        assert_eq!((g.rx_bytes, g.tx_bytes, g.tx_dropped), (4, 1, 3));
        assert_eq!(g.guest_view(), host);
    }

    #[test]
    fn counters_from_a_fake_sysfs() {
        let d = std::env::temp_dir().join(format!("kvmreg-net-{}", std::process::id()));
        let st = d.join("class/net/tap0/statistics");
        std::fs::create_dir_all(&st).unwrap();
        for (i, f) in FILES.iter().enumerate() {
            std::fs::write(st.join(f), format!("{}\n", 10 + i)).unwrap();
        }
        let mut n = NetFiles::open(&d, "tap0").unwrap();
        assert_eq!(n.open_files(), 6);
        let c = n.read().unwrap();
        assert_eq!((c.rx_bytes, c.tx_dropped), (10, 15));
        std::fs::write(st.join("tx_bytes"), "garbage").unwrap();
        assert_eq!(n.read().unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            NetFiles::open(&d, "nope").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        std::fs::create_dir_all(d.join("class/net/mvt/")).unwrap();
        std::fs::write(d.join("class/net/mvt/ifindex"), "7\n").unwrap();
        assert_eq!(name_of_ifindex(&d, 7).as_deref(), Some("mvt"));
        assert_eq!(name_of_ifindex(&d, 8), None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn devices_from_a_fake_fd_table() {
        let d = std::env::temp_dir().join(format!("kvmreg-netdev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let (proc, sys) = (d.join("proc"), d.join("sys"));
        std::fs::create_dir_all(proc.join("7/fd")).unwrap();
        std::fs::create_dir_all(proc.join("7/fdinfo")).unwrap();
        std::fs::create_dir_all(sys.join("class/net/mvt0")).unwrap();
        std::fs::write(sys.join("class/net/mvt0/ifindex"), "12\n").unwrap();
        let link = |fd: u32, to: &str| {
            std::os::unix::fs::symlink(to, proc.join(format!("7/fd/{fd}"))).unwrap()
        };
        let info = |fd: u32, text: &str| {
            std::fs::write(proc.join(format!("7/fdinfo/{fd}")), text).unwrap()
        };
        // Two queues of one multiqueue tap, a tun fd not attached yet, a
        // macvtap, a macvtap of another namespace, and a plain file.
        link(3, "/dev/net/tun");
        info(3, "pos:\t0\niff:\ttap-web\n");
        link(4, "/dev/net/tun");
        info(4, "pos:\t0\niff:\ttap-web\n");
        link(5, "/dev/net/tun");
        info(5, "pos:\t0\n");
        link(6, "/dev/tap12");
        link(8, "/dev/tap99");
        link(9, "/var/lib/img.qcow2");
        let got = devices(&ProcRoot::new(&proc), &sys, 7).unwrap();
        assert_eq!(
            got,
            vec![
                NetDevice {
                    name: "mvt0".into(),
                    kind: NetKind::Macvtap
                },
                NetDevice {
                    name: "tap-web".into(),
                    kind: NetKind::Tap
                },
            ]
        );
        let gone = devices(&ProcRoot::new(&proc), &sys, 8).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        let _ = std::fs::remove_dir_all(&d);
    }
}
