//! Wakes a server's worker as soon as its `logs/` directory changes
//! (inotify), so a written line is read at once instead of at the next
//! poll. Polling stays the fallback: when the directory does not exist yet
//! or inotify is unavailable, [`LogWatch::wait`] just sleeps its timeout.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An inotify watch on one directory. See the module docs.
pub struct LogWatch {
    dir: PathBuf,
    /// The inotify descriptor, once the directory could be watched.
    fd: Option<libc::c_int>,
}

const EVENTS: u32 = libc::IN_MODIFY
    | libc::IN_CREATE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_CLOSE_WRITE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

impl LogWatch {
    /// A watch on `dir` (set up lazily: the directory may appear later).
    pub fn new(dir: &Path) -> LogWatch {
        let mut watch = LogWatch { dir: dir.to_path_buf(), fd: None };
        watch.arm();
        watch
    }

    fn arm(&mut self) {
        if self.fd.is_some() {
            return;
        }
        let Ok(path) = CString::new(self.dir.as_os_str().as_bytes()) else { return };
        // SAFETY: plain syscalls on a descriptor this struct owns; `path` is
        // a valid NUL-terminated string for the duration of the call.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            if fd < 0 {
                return;
            }
            // A linked `logs` is not watched (and not read: see `tenant`).
            let mask = EVENTS | libc::IN_DONT_FOLLOW | libc::IN_ONLYDIR;
            if libc::inotify_add_watch(fd, path.as_ptr(), mask) < 0 {
                libc::close(fd);
                return;
            }
            self.fd = Some(fd);
        }
    }

    /// Waits until the directory changes or `timeout` passes, then drains
    /// the pending notifications. When the directory itself went away, the
    /// watch is dropped and set up again on a later call.
    pub fn wait(&mut self, timeout: Duration) {
        self.arm();
        let Some(fd) = self.fd else {
            std::thread::sleep(timeout);
            return;
        };
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut buf = [0u8; 4096];
        let mut gone = false;
        // SAFETY: `pfd` and `buf` are valid for the calls; `fd` is ours.
        unsafe {
            if libc::poll(&mut pfd, 1, ms) > 0 {
                loop {
                    let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                    if n <= 0 {
                        break;
                    }
                    gone |= drained_events_say_gone(buf.get(..n as usize).unwrap_or_default());
                }
            }
        }
        if gone {
            self.close();
        }
    }

    fn close(&mut self) {
        if let Some(fd) = self.fd.take() {
            // SAFETY: closing the descriptor this struct owns, once.
            unsafe {
                libc::close(fd);
            }
        }
    }
}

/// True when one of the inotify events in `buf` says the watched directory
/// was deleted, moved or unwatched.
fn drained_events_say_gone(buf: &[u8]) -> bool {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut pos = 0;
    while let Some(head) = buf.get(pos..pos + HEADER) {
        let word =
            |at: usize| head.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_ne_bytes);
        let (mask, len) = (word(4), word(12) as usize);
        if mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0 {
            return true;
        }
        pos += HEADER + len;
    }
    false
}

impl Drop for LogWatch {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_write_wakes_the_wait_early_and_a_missing_dir_falls_back_to_sleeping() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("logs");
        let mut missing = LogWatch::new(&dir);
        let started = Instant::now();
        missing.wait(Duration::from_millis(30));
        assert!(started.elapsed() >= Duration::from_millis(30));
        std::fs::create_dir_all(&dir).unwrap();
        let mut watch = LogWatch::new(&dir);
        let file = dir.join("latest.log");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(file, "line\n").unwrap();
        });
        let started = Instant::now();
        watch.wait(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(2), "woken by the write");
        writer.join().unwrap();
    }
}
