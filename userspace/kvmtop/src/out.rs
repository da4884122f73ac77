//! Writing frames to stdout: a closed pipe (`kvmtop -b | head`) ends the
//! program quietly instead of panicking.

use std::io::{self, Write};

/// Print and flush; `Ok(false)` when the reader has gone away.
pub fn emit(text: &str) -> io::Result<bool> {
    let mut o = io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}
