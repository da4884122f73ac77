//! The uevent listener: a `NETLINK_KOBJECT_UEVENT` socket bound to the
//! kernel's group (1), counting KVM's events by `EVENT=` kind and checking,
//! where the kernel has the registry, that each carries its VM's id
//! (`VM_ID=`) and never its name (uevents reach every local user), and that
//! no event about a VM comes before its create event.

use crate::Failures;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct UeventStats {
    pub kinds: BTreeMap<String, u64>,
    pub overruns: u64,
    pub missing_id: u64,
    /// Events that carried a `VM_NAME=`.
    pub named: u64,
    /// Rename or destroy events of a VM whose create event had not come.
    pub before_create: u64,
    /// VMs that existed before the socket was bound (their create event
    /// came before it, so their later events are not "before create").
    pub existing: HashSet<u64>,
    pub create_ids: HashSet<u64>,
    pub destroy_ids: HashSet<u64>,
    pub failures: Failures,
}

impl UeventStats {
    pub fn kind(&self, k: &str) -> u64 {
        self.kinds.get(k).copied().unwrap_or(0)
    }
}

/// Opens and binds the socket (before the first VM is created, so that
/// no event is missed).
pub fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a c_int option value of the right size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            break;
        }
    }
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = 1;
    // SAFETY: addr is a valid sockaddr_nl and its size is passed.
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
    Ok(fd)
}

/// Receives until `stop` (checked every 200 ms). `existing`: the ids of
/// the VMs that were there before the socket was bound.
pub fn listen(
    fd: OwnedFd,
    stop: &AtomicBool,
    registry: bool,
    existing: HashSet<u64>,
) -> UeventStats {
    let mut st = UeventStats {
        existing,
        ..UeventStats::default()
    };
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 200) };
        if r <= 0 {
            continue;
        }
        // SAFETY: buf is writable for buf.len() bytes.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) => st.overruns += 1,
                Some(libc::EINTR) | Some(libc::EAGAIN) => {}
                _ => {
                    st.failures.add(format!("recv uevent: {e}"));
                    break;
                }
            }
            continue;
        }
        handle(&mut st, &buf[..n as usize], registry);
    }
    st
}

fn handle(st: &mut UeventStats, msg: &[u8], registry: bool) {
    let mut fields = msg.split(|&b| b == 0).map(String::from_utf8_lossy);
    let Some(head) = fields.next() else { return };
    if !head.contains('@') {
        return; // not a kernel message
    }
    let env: BTreeMap<String, String> = fields
        .filter_map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let is_kvm = env.get("DEVPATH").is_some_and(|p| p.ends_with("/misc/kvm"));
    let Some(kind) = env.get("EVENT").filter(|_| is_kvm) else {
        return;
    };
    *st.kinds.entry(kind.clone()).or_default() += 1;
    if !registry {
        return;
    }
    let id = env.get("VM_ID").and_then(|v| v.parse::<u64>().ok());
    match id {
        Some(id) if id > 0 => {
            // Every VM but those of `existing` is created after the socket
            // is bound, so without an overrun its create event came first.
            if kind != "create"
                && !st.create_ids.contains(&id)
                && !st.existing.contains(&id)
                && st.overruns == 0
            {
                st.before_create += 1;
                st.failures
                    .add(format!("EVENT={kind} of VM {id} before its create event"));
            }
            if kind == "create" {
                st.create_ids.insert(id);
            } else if kind == "destroy" {
                st.destroy_ids.insert(id);
            }
        }
        _ => {
            st.missing_id += 1;
            st.failures
                .add(format!("EVENT={kind} without a VM_ID: {env:?}"));
        }
    }
    if env.contains_key("VM_NAME") {
        st.named += 1;
        st.failures
            .add(format!("EVENT={kind} carries a name: {env:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kvm_events() {
        let mut st = UeventStats::default();
        let msg = b"change@/devices/virtual/misc/kvm\0DEVPATH=/devices/virtual/misc/kvm\0EVENT=rename\0VM_ID=3\0";
        handle(&mut st, msg, true);
        // A VM that was there before the listener is no such case.
        st.existing.insert(9);
        let msg = b"change@/devices/virtual/misc/kvm\0DEVPATH=/devices/virtual/misc/kvm\0EVENT=destroy\0VM_ID=9\0";
        handle(&mut st, msg, true);
        let msg = b"change@/devices/virtual/misc/kvm\0ACTION=change\0DEVPATH=/devices/virtual/misc/kvm\0SUBSYSTEM=misc\0CREATED=3\0COUNT=1\0EVENT=create\0PID=7\0VM_ID=3\0VM_NAME=kvm3\0";
        handle(&mut st, msg, true);
        let msg = b"change@/devices/virtual/misc/kvm\0DEVPATH=/devices/virtual/misc/kvm\0EVENT=rename\0VM_ID=3\0";
        handle(&mut st, msg, true);
        let msg = b"add@/devices/virtual/net/lo\0DEVPATH=/devices/virtual/net/lo\0EVENT=create\0";
        handle(&mut st, msg, true);
        assert_eq!(st.kind("create"), 1);
        assert_eq!(st.kind("rename"), 2);
        assert_eq!(st.missing_id, 0);
        // The first rename came before the create event; the create event
        // carried a name.
        assert_eq!(st.before_create, 1);
        assert_eq!(st.named, 1);
        assert!(st.create_ids.contains(&3));
    }
}
