//! A VMM's storage I/O, from `/proc/<pid>/io` (kernels with
//! `CONFIG_TASK_IO_ACCOUNTING`; readable with ptrace-read rights over the
//! process: its own user, or root).
//!
//! `read_bytes` and `write_bytes` count what the process made the block
//! layer fetch or dirtied in the page cache, i.e. its disk traffic: what a
//! guest's virtual disks cost the host, whatever the image format. Reads
//! served from the page cache are not counted, and neither is anything on
//! a file system without writeback (tmpfs). The `rchar`/`wchar` counters
//! beside them count every `read`/`write`, eventfds and sockets included,
//! which for a VMM is mostly not storage, so they are left out.

/// A process' cumulative storage I/O in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageBytes {
    /// Fetched from the block layer (`read_bytes`).
    pub read: u64,
    /// Written, less what was truncated away before reaching the disk
    /// (`cancelled_write_bytes`).
    pub written: u64,
}

/// Parse `/proc/<pid>/io`.
pub fn parse_io(text: &str) -> Option<StorageBytes> {
    let (mut read, mut written, mut cancelled) = (None, None, 0u64);
    for l in text.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim().parse::<u64>().ok();
        match k {
            "read_bytes" => read = v,
            "write_bytes" => written = v,
            "cancelled_write_bytes" => cancelled = v.unwrap_or(0),
            _ => {}
        }
    }
    Some(StorageBytes {
        read: read?,
        written: written?.saturating_sub(cancelled),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_block_layer_counters() {
        let t = "rchar: 4096\nwchar: 100\nsyscr: 3\nsyscw: 1\nread_bytes: 8192\n\
                 write_bytes: 12288\ncancelled_write_bytes: 4096\n";
        assert_eq!(
            parse_io(t),
            Some(StorageBytes {
                read: 8192,
                written: 8192
            })
        );
        assert_eq!(parse_io("rchar: 1\n"), None);
        assert_eq!(parse_io("read_bytes: x\nwrite_bytes: 1\n"), None);
    }
}
