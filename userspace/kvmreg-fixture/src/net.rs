//! `--net-rate`: a tap device the VMM holds, with known traffic both ways,
//! as a VMM's virtio-net backend has: frames written to the tap fd are
//! what the guest sends (the device *receives* them), frames the host
//! sends out of the device are what the guest receives (read back from
//! the fd, as a VMM would, so none is dropped).
//!
//! The frames go to a locally administered address with the local
//! experimental ethertype 0x88b5: the host's stack counts and drops them.
//! The device has no address and lives only as long as the fd (not
//! persistent), so nothing of the host's networking changes.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Bytes of each frame (header included).
pub const FRAME: usize = 1024;
/// Bursts a second: small ones, so that an interval of a second or two
/// sees the rate, not whether a burst fell inside it.
const BURSTS: u32 = 10;

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
}

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Create a tap device, bring it up, and start a thread that has the
/// guest send `kib` KiB a second through it and receive half as much (so
/// that a tool that swaps the directions is caught), in [`FRAME`]-byte
/// frames. The name is `kvt<pid>`.
pub fn start(kib: u32) -> Result<()> {
    let name = format!("kvt{}", std::process::id());
    if name.len() >= libc::IFNAMSIZ {
        bail!("tap name {name} too long");
    }
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("--net-rate: open /dev/net/tun (needs CONFIG_TUN)")?;
    let mut req = IfReq::new(&name);
    req.flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which req is (40 bytes).
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error())
            .context("--net-rate: TUNSETIFF (needs CAP_NET_ADMIN)");
    }
    // SAFETY: socket(2) with constant arguments; the fd is checked below.
    let s = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(std::io::Error::last_os_error()).context("--net-rate: AF_PACKET socket");
    }
    // SAFETY: s is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mut up = IfReq::new(&name);
    up.flags = libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads one ifreq, which up is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &up) } < 0 {
        return Err(std::io::Error::last_os_error()).context("--net-rate: bringing the tap up");
    }
    let cname = std::ffi::CString::new(name.clone())?;
    // SAFETY: cname is a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error()).context("--net-rate: if_nametoindex");
    }
    // SAFETY: fcntl with integer arguments on our fd.
    unsafe {
        let fl = libc::fcntl(tun.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(tun.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let frames = (kib as usize * 1024).div_ceil(FRAME);
    std::thread::Builder::new()
        .name("net-io".into())
        .spawn(move || traffic(tun, &sock, ifindex, frames))
        .context("thread for --net-rate")?;
    Ok(())
}

fn frame() -> Vec<u8> {
    let mut f = vec![0u8; FRAME];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

/// `frames` frames a second each way, in [`BURSTS`] bursts; errors are
/// the test's to see (the counters fall short), not ours.
fn traffic(mut tun: File, sock: &OwnedFd, ifindex: u32, frames: usize) -> ! {
    let f = frame();
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&f[..6]);
    let mut back = vec![0u8; 65536];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut burst = 0u32;
    loop {
        burst += 1;
        let due = frames as u64 * u64::from(burst) / u64::from(BURSTS);
        while sent < due {
            // Guest to host: the device receives it.
            let _ = tun.write(&f);
            // Host to guest, every other frame: the device sends it; the
            // VMM reads it.
            if sent.is_multiple_of(2) {
                // SAFETY: f and to are valid for the lengths passed.
                unsafe {
                    libc::sendto(
                        sock.as_raw_fd(),
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&to as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    );
                }
            }
            while tun.read(&mut back).is_ok_and(|n| n > 0) {}
            sent += 1;
        }
        let next = start + Duration::from_secs(1) * burst / BURSTS;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        while tun.read(&mut back).is_ok_and(|n| n > 0) {}
    }
}
