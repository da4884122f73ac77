//! Live updates: KVM's uevents on the kobject-uevent netlink socket, with
//! periodic rescans as the safety net.
//!
//! Events are treated as hints only: each one triggers a rescan, and the
//! guest list always comes from [`crate::discover_with`]. So a lost event
//! (socket buffer overrun, no permission to listen, events from another
//! network namespace not delivered) only delays an update until the next
//! periodic rescan. The socket is hand-opened with `libc` since no small
//! crate wraps `NETLINK_KOBJECT_UEVENT` receive-only use.

use crate::discover::{discover_with, Config};
use crate::Guest;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// What KVM announced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvmEventKind {
    /// A VM was created (`EVENT=create`).
    Create,
    /// A VM was destroyed (`EVENT=destroy`).
    Destroy,
    /// Registry kernels: the VM was renamed.
    Rename,
    /// Any other `EVENT=` value, as sent.
    Other(String),
}

/// A KVM uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmEvent {
    /// What happened (`EVENT=`).
    pub kind: KvmEventKind,
    /// `PID=`: the thread that created the VM.
    pub pid: Option<u32>,
    /// `VM_ID=` (registry kernels). Events carry no name: uevents reach
    /// every local user, a VM's name only those who may see it in `/proc`,
    /// so a listener reads the name there (`/proc/<pid>/kvm/<id>/name`).
    pub vm_id: Option<u64>,
}

/// Parse one kernel uevent message; `None` unless it is KVM's
/// (`SUBSYSTEM=misc`, `DEVPATH` ending in `/kvm`, with `EVENT=`).
pub fn parse_uevent(msg: &[u8]) -> Option<KvmEvent> {
    let mut fields = msg.split(|b| *b == 0).filter(|f| !f.is_empty());
    // The first field is "<action>@<devpath>"; udev's re-broadcasts start
    // with "libudev" and are not kernel messages.
    let first = fields.next()?;
    if first.starts_with(b"libudev") || !first.contains(&b'@') {
        return None;
    }
    let (mut subsystem, mut devpath, mut event) = (None, None, None);
    let (mut pid, mut vm_id) = (None, None);
    for f in fields {
        let f = std::str::from_utf8(f).ok()?;
        let Some((k, v)) = f.split_once('=') else {
            continue;
        };
        match k {
            "SUBSYSTEM" => subsystem = Some(v),
            "DEVPATH" => devpath = Some(v),
            "EVENT" => event = Some(v),
            "PID" => pid = v.parse().ok(),
            "VM_ID" => vm_id = v.parse().ok(),
            _ => {}
        }
    }
    if subsystem != Some("misc") || !devpath?.ends_with("/kvm") {
        return None;
    }
    let kind = match event? {
        "create" => KvmEventKind::Create,
        "destroy" => KvmEventKind::Destroy,
        "rename" => KvmEventKind::Rename,
        o => KvmEventKind::Other(o.to_string()),
    };
    Some(KvmEvent { kind, pid, vm_id })
}

/// A receive-only kobject-uevent socket.
pub struct UeventSocket(OwnedFd);

impl UeventSocket {
    /// Open and bind to the kernel's uevent multicast group.
    pub fn open() -> io::Result<UeventSocket> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // Group 1: the kernel's uevents.
        addr.nl_groups = 1;
        // SAFETY: addr is a valid sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UeventSocket(fd))
    }

    /// Wait up to `timeout` for messages and return the KVM events among
    /// them. An overrun (`ENOBUFS`) is reported as `Ok(None)`: events were
    /// lost and the caller should rescan.
    pub fn wait(&self, timeout: Duration) -> io::Result<Option<Vec<KvmEvent>>> {
        // The socket is non-blocking: with no time to wait, the `recv`
        // below answers alone (one system call per refresh, not two).
        if !timeout.is_zero() {
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                return if e.raw_os_error() == Some(libc::EINTR) {
                    Ok(Some(Vec::new()))
                } else {
                    Err(e)
                };
            }
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(Some(out)),
                    Some(libc::ENOBUFS) => Ok(None),
                    Some(libc::EINTR) => continue,
                    _ => Err(e),
                };
            }
            if let Some(ev) = parse_uevent(&buf[..n as usize]) {
                out.push(ev);
            }
        }
    }
}

/// What changed in one [`Watcher::wait_update`] step.
#[derive(Debug, Clone)]
pub struct Update {
    /// The events that arrived (for a periodic rescan, those that were
    /// waiting, often none).
    pub events: Vec<KvmEvent>,
    /// Why the list was rescanned.
    pub reason: &'static str,
    /// The guest list the rescan found.
    pub guests: Vec<Guest>,
}

/// Keeps a guest list up to date.
pub struct Watcher {
    cfg: Config,
    socket: Option<UeventSocket>,
    /// Why there are no events, when there are none.
    pub socket_error: Option<String>,
    rescan_every: Duration,
    last_scan: Instant,
}

impl Watcher {
    /// Start watching; without a uevent socket (no permission, no netlink
    /// in this namespace) it still works by rescanning.
    pub fn new(cfg: Config, rescan_every: Duration) -> Watcher {
        let (socket, socket_error) = match UeventSocket::open() {
            Ok(s) => (Some(s), None),
            Err(e) => (
                None,
                Some(format!(
                    "no uevents ({e}); rescanning every {rescan_every:?}"
                )),
            ),
        };
        Watcher {
            cfg,
            socket,
            socket_error,
            rescan_every,
            last_scan: Instant::now(),
        }
    }

    /// The current list.
    pub fn scan(&mut self) -> Vec<Guest> {
        self.last_scan = Instant::now();
        discover_with(&self.cfg).guests
    }

    /// Block until a KVM event arrives or the rescan period is over, then
    /// rescan.
    pub fn wait_update(&mut self) -> io::Result<Update> {
        loop {
            let left = self.rescan_every.saturating_sub(self.last_scan.elapsed());
            if left.is_zero() {
                // Drain what the socket holds first: on a host where a scan
                // takes longer than the rescan period, the rescan is always
                // due and events would otherwise never be read.
                let events = match &self.socket {
                    Some(sock) => sock.wait(Duration::ZERO)?.unwrap_or_default(),
                    None => Vec::new(),
                };
                return Ok(Update {
                    events,
                    reason: "periodic rescan",
                    guests: self.scan(),
                });
            }
            let Some(sock) = &self.socket else {
                std::thread::sleep(left);
                continue;
            };
            match sock.wait(left)? {
                None => {
                    return Ok(Update {
                        events: Vec::new(),
                        reason: "uevents lost (buffer overrun)",
                        guests: self.scan(),
                    })
                }
                Some(ev) if !ev.is_empty() => {
                    return Ok(Update {
                        events: ev,
                        reason: "uevent",
                        guests: self.scan(),
                    })
                }
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(fields: &[&str]) -> Vec<u8> {
        let mut m = Vec::new();
        for f in fields {
            m.extend_from_slice(f.as_bytes());
            m.push(0);
        }
        m
    }

    #[test]
    fn parses_kvm_uevents() {
        let m = msg(&[
            "change@/devices/virtual/misc/kvm",
            "ACTION=change",
            "DEVPATH=/devices/virtual/misc/kvm",
            "SUBSYSTEM=misc",
            "CREATED=1",
            "COUNT=1",
            "EVENT=create",
            "PID=1234",
            "VM_ID=5",
        ]);
        assert_eq!(
            parse_uevent(&m),
            Some(KvmEvent {
                kind: KvmEventKind::Create,
                pid: Some(1234),
                vm_id: Some(5),
            })
        );
        let unpatched = msg(&[
            "change@/devices/virtual/misc/kvm",
            "DEVPATH=/devices/virtual/misc/kvm",
            "SUBSYSTEM=misc",
            "EVENT=destroy",
            "PID=9",
        ]);
        let e = parse_uevent(&unpatched).unwrap();
        assert_eq!(
            (e.kind, e.pid, e.vm_id),
            (KvmEventKind::Destroy, Some(9), None)
        );
    }

    #[test]
    fn ignores_other_messages() {
        assert_eq!(parse_uevent(b""), None);
        assert_eq!(parse_uevent(b"libudev\0\xfe\xed"), None);
        let usb = msg(&[
            "add@/devices/usb1",
            "SUBSYSTEM=usb",
            "DEVPATH=/devices/usb1",
            "EVENT=create",
        ]);
        assert_eq!(parse_uevent(&usb), None);
        let no_event = msg(&[
            "change@/devices/virtual/misc/kvm",
            "SUBSYSTEM=misc",
            "DEVPATH=/devices/virtual/misc/kvm",
        ]);
        assert_eq!(parse_uevent(&no_event), None);
        assert_eq!(parse_uevent(&[0xff, b'@', 0, 0xff, 0xfe]), None);
    }
}
