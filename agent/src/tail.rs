//! Following one server's `logs/latest.log`: reading complete lines as they
//! are written, across rotation (renamed or deleted, new file) and truncation,
//! and numbering entries with DESIGN.md's durable offsets,
//! `(generation << 40) + byte position of the entry's first line`.
//!
//! The tailer keeps the file open, so it reads the last lines of a file that
//! was renamed or deleted before it switches to the new latest.log, and the
//! inode it compares cannot be reused while it holds it. Only lines ending in
//! `\n` are read; a partial last line waits (except at the end of a file that
//! was replaced, which will never grow). It saves its [`LogState`] before it
//! hands out entries (the caller publishes them), so an offset a hub holds is
//! always covered by the state file. It never touches the ring or the status.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Local};

use crate::parse::{Entry, Folder};
use crate::state::{LogState, StateError, StateStore};
use crate::tenant::{TenantError, TenantPath, WarnOnce};

/// Bytes read per step; a step that fills it says more may be waiting.
const CHUNK: usize = 256 * 1024;
/// A line longer than this keeps only its first `MAX_LINE` bytes, followed
/// by a note of how many were cut ([`cut_note`]); the rest is read and dropped
/// as it comes, so a line that never ends (a tenant's 1 GiB without a
/// newline) holds at most this much memory.
pub const MAX_LINE: usize = 64 * 1024;
/// An entry is complete this long after its last line (DESIGN.md).
pub const FOLD_WAIT: Duration = Duration::from_millis(100);
/// Bytes of the first line that identify a file.
const HEAD_BYTES: usize = 256;

/// The offset of a line: `(generation << 40) + position`.
pub fn offset(generation: u64, position: u64) -> u64 {
    (generation << 40) + position
}

/// What the tailer saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum TailEvent {
    /// A complete entry.
    Entry(Entry),
    /// A new latest.log began (a rotation, or the first file): the server is starting.
    NewFile,
}

/// A tailer's failure in one step; the worker logs it and tries again on the
/// next poll, and the entries of the step are still published.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Reading the log or its metadata failed (permissions, IO).
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    /// The state file could not be written.
    #[error(transparent)]
    State(#[from] StateError),
}

/// One server's log follower.
pub struct Tailer {
    server_id: String,
    path: TenantPath,
    /// latest.log is something the agent must not read (logged once).
    refused: WarnOnce,
    store: Arc<StateStore>,
    file: Option<File>,
    state: LogState,
    /// What the state file holds for this server.
    saved: LogState,
    /// Bytes read after `state.position` that do not end a line yet (while
    /// `cut` > 0: the first [`MAX_LINE`] bytes of an overlong line).
    carry: Vec<u8>,
    /// Bytes of the current overlong line read past `carry` and dropped.
    cut: u64,
    buf: Vec<u8>,
    folder: Folder,
    last_line_at: Instant,
}

impl Tailer {
    /// Opens `path` for server `server_id` (a link, FIFO, socket or device
    /// there counts as no file: see [`crate::tenant`]), deciding the generation from the
    /// saved state: the same file (same inode, not shorter than the saved
    /// position, same first line) keeps its generation and is read again from
    /// the start to refill the ring with the same offsets; anything else is a
    /// new generation. Returns the tailer and its floor (the newest offset it
    /// can no longer produce).
    ///
    /// # Errors
    /// The state file cannot be written (when the generation changed).
    pub fn open(server_id: &str, path: &TenantPath, store: Arc<StateStore>) -> Result<(Tailer, u64), StateError> {
        let saved = store.log_state(server_id);
        let opened = path.open();
        let mut refused = WarnOnce::default();
        refused.note(server_id, &opened);
        let file = opened.ok();
        let mut tailer = Tailer {
            server_id: server_id.to_string(),
            path: path.clone(),
            refused,
            store,
            file: None,
            state: saved.clone().unwrap_or(LogState { generation: 1, ..LogState::default() }),
            saved: saved.clone().unwrap_or_default(),
            carry: Vec::new(),
            cut: 0,
            buf: vec![0; CHUNK],
            folder: Folder::default(),
            last_line_at: Instant::now(),
        };
        let floor = match (&file, saved.is_some()) {
            (Some(f), _) => {
                let (ino, len) = f.metadata().map(|m| (m.ino(), m.len())).unwrap_or((0, 0));
                let same = tailer.state.inode == ino
                    && len >= tailer.state.position
                    && (tailer.state.head.is_empty() || head_of(f).as_deref() == Some(tailer.state.head.as_str()));
                if !same {
                    if saved.is_some() {
                        log::info!("server {server_id}: latest.log was replaced while the agent was down");
                    }
                    tailer.new_generation(ino);
                }
                tailer.state.position = 0;
                tailer.state.prev_last
            }
            // The generation's file is gone: nothing of it can be read again.
            (None, true) => tailer.state.last_offset.max(tailer.state.prev_last),
            (None, false) => 0,
        };
        tailer.file = file;
        tailer.save()?;
        Ok((tailer, floor))
    }

    /// The state as it stands (for tests and logs).
    pub fn state(&self) -> &LogState {
        &self.state
    }

    /// Reads what is there (up to one chunk), follows a rotation or a
    /// truncation when the open file is read to its end, saves the state if
    /// it changed, and appends what it saw to `out`. Returns whether more may
    /// be waiting (call again before sleeping).
    ///
    /// # Errors
    /// An IO or state-file error; `out` still holds what was read before it.
    pub fn step(&mut self, out: &mut Vec<TailEvent>) -> Result<bool, TailError> {
        let now = Local::now();
        let result = self.advance(&now, out);
        self.save()?;
        result.map_err(|e| TailError::Io(self.path.path(), e))
    }

    fn advance(&mut self, now: &DateTime<Local>, out: &mut Vec<TailEvent>) -> io::Result<bool> {
        if self.read_chunk(now, out)? == CHUNK {
            return Ok(true);
        }
        // Renamed away and not replaced yet (or replaced by something that
        // must not be read): keep the old file.
        let Some(ino) = self.tenant(self.path.inode())? else { return Ok(false) };
        if self.file.is_none() || ino != self.state.inode {
            // Rotation: finish the old file (lines written just before the
            // rename are still in it), then start the new one.
            while self.read_chunk(now, out)? == CHUNK {}
            self.finish_file(now, out);
            let Some(file) = self.tenant(self.path.open())? else { return Ok(false) };
            let ino = file.metadata()?.ino();
            log::info!("server {}: following a new latest.log (inode {ino})", self.server_id);
            self.new_generation(ino);
            self.file = Some(file);
            out.push(TailEvent::NewFile);
            return Ok(true);
        }
        if let Some(file) = &self.file {
            if file.metadata()?.len() < self.read_at() {
                log::info!("server {}: latest.log was truncated", self.server_id);
                out.extend(self.folder.flush().map(TailEvent::Entry));
                self.new_generation(ino);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A look at latest.log: what is there, `None` when it is missing or
    /// refused (logged once), or an IO error.
    fn tenant<T>(&mut self, result: Result<T, TenantError>) -> io::Result<Option<T>> {
        if let Err(TenantError::Io(_, e)) = result {
            // The worker logs it once.
            return Err(e);
        }
        self.refused.note(&self.server_id, &result);
        match result {
            Ok(v) => Ok(Some(v)),
            Err(TenantError::Missing(_) | TenantError::Refused(..)) => Ok(None),
            Err(TenantError::Io(_, e)) => Err(e),
        }
    }

    /// Completes the entry waiting for continuation lines when its last line
    /// is [`FOLD_WAIT`] old.
    pub fn flush_idle(&mut self, now: Instant) -> Option<Entry> {
        if self.folder.has_pending() && now.duration_since(self.last_line_at) >= FOLD_WAIT {
            self.folder.flush()
        } else {
            None
        }
    }

    /// Whether an entry waits for continuation lines.
    pub fn has_pending(&self) -> bool {
        self.folder.has_pending()
    }

    /// After the first read at start: completes the waiting entry when the
    /// file has not changed for [`FOLD_WAIT`] (its lines were written before
    /// the agent started, so no continuation is on its way).
    pub fn settle(&mut self) -> Option<Entry> {
        let modified = self.file.as_ref()?.metadata().ok()?.modified().ok()?;
        let age = std::time::SystemTime::now().duration_since(modified).unwrap_or_default();
        if age >= FOLD_WAIT {
            self.folder.flush()
        } else {
            None
        }
    }

    /// Reads up to one chunk from the open file and takes its complete lines.
    fn read_chunk(&mut self, now: &DateTime<Local>, out: &mut Vec<TailEvent>) -> io::Result<usize> {
        let mut at = self.read_at();
        let Some(file) = &self.file else { return Ok(0) };
        if self.cut > 0 {
            // Inside an overlong line, a hole (a sparse file) holds no
            // newline: skip it rather than read its zeros.
            let skip = hole_at(file, at);
            self.cut += skip;
            at += skip;
        }
        let n = loop {
            match file.read_at(&mut self.buf, at) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(0);
        }
        let mut from = 0;
        if self.cut > 0 {
            // Inside an overlong line: drop bytes up to its newline.
            match memchr::memchr(b'\n', self.buf.get(..n).unwrap_or_default()) {
                None => {
                    self.cut += n as u64;
                    return Ok(n);
                }
                Some(nl) => {
                    self.cut += nl as u64;
                    self.end_overlong_line(now, out, 1);
                    from = nl + 1;
                }
            }
        }
        self.carry.extend_from_slice(self.buf.get(from..n).unwrap_or_default());
        self.take_lines(now, out, false);
        Ok(n)
    }

    /// Where the next read starts: after the consumed lines, what waits in
    /// `carry`, and what was dropped of an overlong line.
    fn read_at(&self) -> u64 {
        self.state.position + self.carry.len() as u64 + self.cut
    }

    /// Turns the complete lines in `carry` into entries; with `eof`, also
    /// the partial last line. A partial line longer than [`MAX_LINE`] keeps
    /// its start in `carry` and the rest is dropped as it is read.
    fn take_lines(&mut self, now: &DateTime<Local>, out: &mut Vec<TailEvent>, eof: bool) {
        if self.cut > 0 {
            if eof {
                self.end_overlong_line(now, out, 0);
            }
            return;
        }
        let carry = std::mem::take(&mut self.carry);
        let mut start = 0;
        while start < carry.len() {
            let rest = carry.get(start..).unwrap_or_default();
            let (len, next) = match memchr::memchr(b'\n', rest) {
                Some(nl) => (nl, nl + 1),
                None if eof => (rest.len(), rest.len()),
                None if rest.len() > MAX_LINE => {
                    self.cut = (rest.len() - MAX_LINE) as u64;
                    self.carry.extend_from_slice(rest.get(..MAX_LINE).unwrap_or(rest));
                    break;
                }
                None => break,
            };
            let whole = rest.get(..len).unwrap_or(rest);
            let line = whole.strip_suffix(b"\r").unwrap_or(whole);
            let cut = line.len().saturating_sub(MAX_LINE) as u64;
            self.push_line(self.state.position + start as u64, line.get(..MAX_LINE).unwrap_or(line), cut, now, out);
            start += next;
        }
        self.state.position += start as u64;
        if self.cut == 0 {
            self.carry = carry;
            self.carry.drain(..start);
        }
    }

    /// The overlong line in `carry` ended (`newline` is 1, or 0 at the end
    /// of a finished file): its start becomes an entry with a [`cut_note`].
    fn end_overlong_line(&mut self, now: &DateTime<Local>, out: &mut Vec<TailEvent>, newline: u64) {
        let start = std::mem::take(&mut self.carry);
        let cut = std::mem::take(&mut self.cut);
        self.push_line(self.state.position, &start, cut, now, out);
        self.state.position += start.len() as u64 + cut + newline;
    }

    /// Hands one line (its first bytes, and how many more were cut) to the folder.
    fn push_line(&mut self, position: u64, line: &[u8], cut: u64, now: &DateTime<Local>, out: &mut Vec<TailEvent>) {
        if position == 0 {
            self.state.head = fingerprint(line);
        }
        let text = if cut == 0 {
            String::from_utf8_lossy(line)
        } else {
            // Cut on a character boundary, so the note is not glued to half a character.
            let whole = match std::str::from_utf8(line) {
                Err(e) if e.error_len().is_none() => line.get(..e.valid_up_to()).unwrap_or_default(),
                _ => line,
            };
            let cut = cut + (line.len() - whole.len()) as u64;
            format!("{}{}", String::from_utf8_lossy(whole), cut_note(cut)).into()
        };
        let offset = offset(self.state.generation, position);
        out.extend(self.folder.push(offset, &text, now).map(TailEvent::Entry));
        if let Some(begun) = self.folder.pending_offset() {
            self.state.last_offset = self.state.last_offset.max(begun);
        }
        self.last_line_at = Instant::now();
    }

    /// The open file is finished: its partial last line is a line, and the
    /// waiting entry is complete.
    fn finish_file(&mut self, now: &DateTime<Local>, out: &mut Vec<TailEvent>) {
        self.take_lines(now, out, true);
        out.extend(self.folder.flush().map(TailEvent::Entry));
    }

    /// Starts a new generation on the file with inode `ino`. A generation
    /// that never had a file (inode 0) is adopted instead.
    fn new_generation(&mut self, ino: u64) {
        let s = &mut self.state;
        if s.inode != 0 {
            s.prev_last = s.prev_last.max(s.last_offset);
            s.generation += 1;
        }
        s.inode = ino;
        s.position = 0;
        s.head.clear();
        self.carry.clear();
        self.cut = 0;
        self.folder.reset();
    }

    /// Writes the state file when something a restart needs has changed
    /// (re-reading an old file from the start changes nothing).
    fn save(&mut self) -> Result<(), StateError> {
        let (s, d) = (&self.state, &self.saved);
        let changed = s.generation != d.generation
            || s.inode != d.inode
            || s.prev_last != d.prev_last
            || s.head != d.head
            || s.last_offset > d.last_offset
            || s.position > d.position;
        if changed {
            self.store.save_log_state(&self.server_id, &self.state)?;
            self.saved = self.state.clone();
        }
        Ok(())
    }
}

/// What ends a line cut at [`MAX_LINE`]: how many bytes were dropped.
pub fn cut_note(cut: u64) -> String {
    format!(" [… {cut} bytes cut]")
}

/// The length of the hole (unwritten, reads as zeros) starting at `at`, by
/// `lseek(SEEK_DATA)`; 0 where there is data or the file system cannot say.
fn hole_at(file: &File, at: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let Ok(offset) = libc::off_t::try_from(at) else { return 0 };
    // SAFETY: lseek on a descriptor we own; reads use pread, so moving its
    // file offset changes nothing.
    let data = unsafe { libc::lseek(file.as_raw_fd(), offset, libc::SEEK_DATA) };
    match u64::try_from(data) {
        Ok(data) => data.saturating_sub(at),
        // No data after `at`: the rest is a hole.
        Err(_) if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => {
            file.metadata().map_or(0, |m| m.len().saturating_sub(at))
        }
        Err(_) => 0,
    }
}

/// FNV-1a of a first line's first bytes, hex.
fn fingerprint(line: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in line.get(..HEAD_BYTES).unwrap_or(line) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The fingerprint of a file's first line, when enough of it is there.
fn head_of(file: &File) -> Option<String> {
    let mut buf = vec![0; 4096];
    let n = file.read_at(&mut buf, 0).ok()?;
    let buf = buf.get(..n).unwrap_or_default();
    match buf.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let first = buf.get(..nl).unwrap_or(buf);
            Some(fingerprint(first.strip_suffix(b"\r").unwrap_or(first)))
        }
        None if n > HEAD_BYTES => Some(fingerprint(buf)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use std::fs;
    use std::path::PathBuf;

    struct Fixture {
        dir: tempfile::TempDir,
        log: PathBuf,
        path: TenantPath,
        store: Arc<StateStore>,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let dir = tempfile::Builder::new().prefix(&format!("aymc-agent-tail-{name}-")).tempdir().unwrap();
            fs::create_dir_all(dir.path().join("logs")).unwrap();
            let store = Arc::new(StateStore::open(&dir.path().join("state.toml")).unwrap());
            let path = TenantPath::new(dir.path(), "logs/latest.log");
            Fixture { log: dir.path().join("logs/latest.log"), path, dir, store }
        }

        fn append(&self, text: &str) {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }

        fn reopen_store(&mut self) {
            self.store = Arc::new(StateStore::open(&self.dir.path().join("state.toml")).unwrap());
        }
    }

    /// Steps until nothing more is waiting, then flushes the waiting entry.
    fn drain(t: &mut Tailer) -> Vec<TailEvent> {
        let mut out = Vec::new();
        while t.step(&mut out).unwrap() {}
        out.extend(t.folder.flush().map(TailEvent::Entry));
        out
    }

    fn offsets(events: &[TailEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                TailEvent::Entry(e) => Some(e.offset),
                TailEvent::NewFile => None,
            })
            .collect()
    }

    const A: &str = "[10:00:00] [Server thread/INFO]: a\n";
    const B: &str = "[10:00:01] [Server thread/INFO]: b\n";

    #[test]
    fn offsets_are_generation_and_position_and_partial_lines_wait() {
        let f = Fixture::new("offsets");
        f.append(A);
        let (mut t, floor) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        assert_eq!(floor, 0);
        assert_eq!(offsets(&drain(&mut t)), vec![1 << 40]);
        f.append("[10:00:01] [Server thread/INFO]: no newline yet");
        assert!(offsets(&drain(&mut t)).is_empty());
        f.append("\n");
        assert_eq!(offsets(&drain(&mut t)), vec![(1 << 40) + A.len() as u64]);
        assert_eq!(f.store.log_state("s").unwrap().position, t.state().position);
    }

    #[test]
    fn rotation_reads_the_old_file_to_its_end_then_bumps_the_generation() {
        let f = Fixture::new("rotation");
        f.append(A);
        let (mut t, _) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        drain(&mut t);
        f.append(B);
        fs::rename(&f.log, f.dir.path().join("logs/2026-11-28-1.log")).unwrap();
        f.append(A);
        let events = drain(&mut t);
        assert_eq!(offsets(&events), vec![(1 << 40) + A.len() as u64, 2 << 40]);
        assert!(events.contains(&TailEvent::NewFile));
        let st = f.store.log_state("s").unwrap();
        assert_eq!((st.generation, st.prev_last), (2, (1 << 40) + A.len() as u64));
    }

    #[test]
    fn truncation_is_a_new_generation() {
        let f = Fixture::new("truncate");
        f.append(A);
        f.append(B);
        let (mut t, _) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        drain(&mut t);
        fs::write(&f.log, "").unwrap();
        f.append(B);
        assert_eq!(offsets(&drain(&mut t)), vec![2 << 40]);
    }

    #[test]
    fn restart_same_file_same_offsets_replaced_file_new_generation() {
        let mut f = Fixture::new("restart");
        f.append(A);
        f.append(B);
        let (mut t, _) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        let first = offsets(&drain(&mut t));
        drop(t);
        f.append(A);
        f.reopen_store();
        let (mut t, floor) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        assert_eq!(floor, 0);
        let again = offsets(&drain(&mut t));
        assert_eq!(&again[..2], &first[..]);
        assert_eq!(again.len(), 3);
        drop(t);
        // Replaced while down (a new inode, even with the same first line).
        fs::rename(&f.log, f.dir.path().join("logs/old.log")).unwrap();
        f.append(A);
        f.reopen_store();
        let (mut t, floor) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        assert_eq!(floor, again[2]);
        assert_eq!(offsets(&drain(&mut t)), vec![2 << 40]);
        drop(t);
        // Gone while down: the floor covers the whole generation.
        fs::remove_file(&f.log).unwrap();
        f.reopen_store();
        let (mut t, floor) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        assert_eq!(floor, 2 << 40);
        f.append(B);
        assert_eq!(offsets(&drain(&mut t)), vec![3 << 40]);
    }

    #[test]
    fn a_rewritten_file_with_the_same_inode_is_a_new_generation() {
        let mut f = Fixture::new("rewritten");
        f.append(A);
        let (mut t, _) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        drain(&mut t);
        drop(t);
        fs::write(&f.log, format!("{B}{B}")).unwrap();
        f.reopen_store();
        let (mut t, _) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        assert_eq!(offsets(&drain(&mut t))[0], 2 << 40);
    }

    fn messages(events: &[TailEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                TailEvent::Entry(e) => Some(e.message.clone()),
                TailEvent::NewFile => None,
            })
            .collect()
    }

    #[test]
    fn an_overlong_line_keeps_its_start_and_a_note() {
        let f = Fixture::new("long");
        // Whole in one read, with a two-byte character across the cut.
        f.append(&format!("{}é{}\n{A}", "x".repeat(MAX_LINE - 1), "y".repeat(9)));
        let (mut t, _) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        let events = drain(&mut t);
        let first_len = MAX_LINE as u64 + 11;
        assert_eq!(offsets(&events), vec![1 << 40, (1 << 40) + first_len]);
        assert_eq!(messages(&events)[0], format!("{}{}", "x".repeat(MAX_LINE - 1), cut_note(11)));
        assert_eq!(t.state().position, first_len + A.len() as u64);
    }

    #[test]
    fn a_hole_inside_an_overlong_line_is_skipped_not_read() {
        let f = Fixture::new("hole");
        f.append(&"x".repeat(MAX_LINE + 1));
        // 64 GiB of nothing (sparse): read, it would take minutes.
        let hole_end = (MAX_LINE + 1) as u64 + (64 << 30);
        fs::OpenOptions::new().write(true).open(&f.log).unwrap().set_len(hole_end).unwrap();
        f.append(&format!("\n{B}"));
        let (mut t, _) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        let started = Instant::now();
        let events = drain(&mut t);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(offsets(&events), vec![1 << 40, (1 << 40) + hole_end + 1]);
        assert!(messages(&events)[0].ends_with(&cut_note(hole_end - MAX_LINE as u64)));
    }

    #[test]
    fn a_line_that_never_ends_holds_max_line_bytes() {
        let f = Fixture::new("endless");
        f.append(A);
        // 8 MiB of zeros without a newline (sparse), in many reads.
        let start = A.len() as u64;
        fs::OpenOptions::new().write(true).open(&f.log).unwrap().set_len(start + (8 << 20)).unwrap();
        let (mut t, _) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        assert_eq!(offsets(&drain(&mut t)), vec![1 << 40]);
        assert_eq!((t.carry.len(), t.cut, t.state().position), (MAX_LINE, (8 << 20) - MAX_LINE as u64, start));
        f.append(&format!("\n{B}"));
        let events = drain(&mut t);
        assert_eq!(offsets(&events), vec![(1 << 40) + start, (1 << 40) + start + (8 << 20) + 1]);
        assert!(messages(&events)[0].ends_with(&cut_note((8 << 20) - MAX_LINE as u64)));
        assert_eq!(t.carry.len(), 0);
        // Read again from the start (a restart): the same offsets.
        drop(t);
        let (mut t, _) = Tailer::open("s", &f.path, f.store.clone()).unwrap();
        assert_eq!(offsets(&drain(&mut t)), vec![1 << 40, (1 << 40) + start, (1 << 40) + start + (8 << 20) + 1]);
        // An overlong last line of a rotated file ends with the file.
        f.append(&"z".repeat(MAX_LINE * 3));
        fs::rename(&f.log, f.dir.path().join("logs/old.log")).unwrap();
        f.append(A);
        let events = drain(&mut t);
        assert_eq!(messages(&events)[0], format!("{}{}", "z".repeat(MAX_LINE), cut_note(2 * MAX_LINE as u64)));
        assert_eq!(offsets(&events)[1], 2 << 40);
    }
}
