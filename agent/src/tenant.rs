//! Reading inside server directories, which their tenants can write: a
//! tenant may put a symbolic link (`logs/latest.log -> /etc/shadow`, to
//! another tenant's log, to the agent's state file), a FIFO (an `open` that
//! never returns), a socket or a device where the agent expects a file, or
//! a file that never ends.
//!
//! A [`TenantPath`] is a trusted directory (the operator's `dir`) and a path
//! below it. Below the trusted directory nothing is followed: every
//! directory is opened with `O_NOFOLLOW` relative to the one before
//! (`openat`), and the file itself with `O_NOFOLLOW | O_NONBLOCK` (a FIFO
//! opens at once) and then must be a regular file by `fstat` on the opened
//! descriptor, not by a `stat` of the path, which could change in between.
//! Anything else is [`TenantError::Refused`], which callers treat as "no such
//! file" and log once per condition ([`WarnOnce`]), not once per poll.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

/// Why a path below a server directory gives nothing.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// Nothing there (or a directory on the way is missing): normal, silent.
    #[error("{0}: no such file")]
    Missing(PathBuf),
    /// Something the agent must not read is there; treated as missing and
    /// logged once per condition (the text says what it is).
    #[error("{0} is {1}; treated as missing")]
    Refused(PathBuf, &'static str),
    /// Reading failed otherwise (permissions, IO); logged by the caller.
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
}

/// A path below a trusted directory; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPath {
    /// The operator's directory: followed as configured.
    trusted: PathBuf,
    /// Normal components only; none of them is followed.
    below: Vec<OsString>,
}

const DIR_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
const FILE_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;

impl TenantPath {
    /// `below` (relative, no `..`) under `trusted`.
    pub fn new(trusted: &Path, below: &str) -> TenantPath {
        let below = Path::new(below).components().map(|c| c.as_os_str().to_os_string()).collect();
        TenantPath { trusted: trusted.to_path_buf(), below }
    }

    /// A configured file path (the pid file): below `dir` when it is under
    /// it, else only its last component is not followed (the directories
    /// above it are the operator's).
    pub fn within(dir: &Path, path: &Path) -> TenantPath {
        if let Ok(rest) = path.strip_prefix(dir) {
            if !rest.as_os_str().is_empty() && rest.components().all(|c| matches!(c, Component::Normal(_))) {
                let below = rest.components().map(|c| c.as_os_str().to_os_string()).collect();
                return TenantPath { trusted: dir.to_path_buf(), below };
            }
        }
        let trusted = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let below = path.file_name().map(OsStr::to_os_string).into_iter().collect();
        TenantPath { trusted, below }
    }

    /// The whole path, for messages.
    pub fn path(&self) -> PathBuf {
        self.below.iter().fold(self.trusted.clone(), |p, c| p.join(c))
    }

    fn io(&self, e: io::Error) -> TenantError {
        TenantError::Io(self.path(), e)
    }

    /// Opens the directory holding the last component, not following any
    /// link below the trusted directory.
    fn parent(&self) -> Result<(OwnedFd, &OsStr), TenantError> {
        let Some((last, dirs)) = self.below.split_last() else {
            return Err(TenantError::Refused(self.path(), "not a file name"));
        };
        let trusted = if self.trusted.as_os_str().is_empty() { Path::new(".") } else { &self.trusted };
        let mut fd = match open_at(None, trusted.as_os_str(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => return Err(self.classify(e, None)),
        };
        for dir in dirs {
            fd = match open_at(Some(&fd), dir, DIR_FLAGS) {
                Ok(next) => next,
                Err(e) => return Err(self.classify(e, Some((&fd, dir)))),
            };
        }
        Ok((fd, last))
    }

    /// Turns an `open` error into missing, refused (saying what is there) or IO.
    fn classify(&self, e: io::Error, at: Option<(&OwnedFd, &OsStr)>) -> TenantError {
        match e.raw_os_error() {
            Some(libc::ENOENT) => TenantError::Missing(self.path()),
            Some(libc::ELOOP | libc::ENOTDIR | libc::ENXIO | libc::EMLINK) => {
                let what = at.and_then(|(dir, name)| stat_at(dir, name).ok()).map_or("not a regular file", describe);
                TenantError::Refused(self.path(), what)
            }
            _ => self.io(e),
        }
    }

    /// Opens the file for reading: a regular file, reached through no link.
    ///
    /// # Errors
    /// [`TenantError`]: missing, refused, or an IO error.
    pub fn open(&self) -> Result<File, TenantError> {
        let (dir, name) = self.parent()?;
        let fd = open_at(Some(&dir), name, FILE_FLAGS).map_err(|e| self.classify(e, Some((&dir, name))))?;
        let st = fstat(&fd).map_err(|e| self.io(e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(TenantError::Refused(self.path(), describe(st)));
        }
        Ok(File::from(fd))
    }

    /// The inode of the regular file there (`lstat` below the trusted
    /// directory: for noticing a replaced file; [`TenantPath::open`] checks again).
    ///
    /// # Errors
    /// As [`TenantPath::open`].
    pub fn inode(&self) -> Result<u64, TenantError> {
        let (dir, name) = self.parent()?;
        match stat_at(&dir, name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Ok(st.st_ino),
            Ok(st) => Err(TenantError::Refused(self.path(), describe(st))),
            Err(e) => Err(self.classify(e, None)),
        }
    }

    /// Names of the regular files in the directory there (links, FIFOs,
    /// sockets, devices and directories inside it are left out).
    ///
    /// # Errors
    /// As [`TenantPath::open`], for the directory.
    pub fn regular_files(&self) -> Result<Vec<OsString>, TenantError> {
        let (parent, name) = self.parent()?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let dir = open_at(Some(&parent), name, flags).map_err(|e| self.classify(e, Some((&parent, name))))?;
        list_regular(dir).map_err(|e| self.io(e))
    }

    /// Reads at most `max` bytes from the start of the file.
    ///
    /// # Errors
    /// As [`TenantPath::open`].
    pub fn read_head(&self, max: usize) -> Result<Vec<u8>, TenantError> {
        let file = self.open()?;
        let mut buf = vec![0; max];
        let mut n = 0;
        while n < max {
            let Some(rest) = buf.get_mut(n..) else { break };
            match file.read_at(rest, n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        buf.truncate(n);
        Ok(buf)
    }
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn open_at(dir: Option<&OwnedFd>, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let name = cstr(name)?;
    let dirfd = dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    loop {
        // SAFETY: a valid NUL-terminated name and a descriptor we own (or AT_FDCWD).
        let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: openat just returned this descriptor; nobody else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is valid; fstat fills it from a descriptor we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: what is there, links not followed.
fn stat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<libc::stat> {
    let name = cstr(name)?;
    // SAFETY: an all-zero `stat` is valid; fstatat fills it; the name is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What a non-regular file is, for the log.
fn describe(st: libc::stat) -> &'static str {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFIFO => "a FIFO, not a regular file",
        libc::S_IFSOCK => "a socket, not a regular file",
        libc::S_IFCHR | libc::S_IFBLK => "a device, not a regular file",
        libc::S_IFDIR => "a directory, not a regular file",
        libc::S_IFREG => "a regular file where a directory belongs",
        _ => "not a regular file",
    }
}

/// The regular files of an open directory (consumes the descriptor).
fn list_regular(dir: OwnedFd) -> io::Result<Vec<OsString>> {
    // A second descriptor for fstatat, since fdopendir takes the first.
    let probe = dir.try_clone()?;
    let raw = dir.into_raw_fd();
    // SAFETY: fdopendir takes ownership of `raw` on success; on failure it
    // is still ours and closed here.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: `raw` is ours and not used again.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: `stream` is a valid DIR*; the entry is read before the next readdir.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated.
        let (name, kind) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
        let name = OsStr::from_bytes(name.to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let regular = match kind {
            libc::DT_REG => true,
            libc::DT_UNKNOWN => stat_at(&probe, name).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG),
            _ => false,
        };
        if regular {
            names.push(OsString::from_vec(name.as_bytes().to_vec()));
        }
    }
    // SAFETY: closing the DIR* we opened (and its descriptor), once.
    unsafe { libc::closedir(stream) };
    Ok(names)
}

/// Logs a refusal once while it lasts: a lasting condition is one warning,
/// not one per poll; it is logged again when it comes back after it cleared.
#[derive(Debug, Default)]
pub struct WarnOnce {
    last: Option<String>,
}

impl WarnOnce {
    /// Logs `text` (with the server id) unless it was the last one logged.
    pub fn warn(&mut self, server_id: &str, text: String) {
        if self.last.as_ref() != Some(&text) {
            log::warn!("server {server_id}: {text}");
            self.last = Some(text);
        }
    }

    /// The condition is over.
    pub fn clear(&mut self) {
        self.last = None;
    }

    /// Logs a refusal or IO error once; forgets the last warning otherwise.
    pub fn note<T>(&mut self, server_id: &str, result: &Result<T, TenantError>) {
        match result {
            Err(e @ (TenantError::Refused(..) | TenantError::Io(..))) => self.warn(server_id, e.to_string()),
            _ => self.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn only_regular_files_reached_through_no_link() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("srv");
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::write(root.path().join("secret"), "secret").unwrap();
        let log = TenantPath::new(&dir, "logs/latest.log");
        assert_eq!(log.path(), dir.join("logs/latest.log"));
        assert!(matches!(log.open(), Err(TenantError::Missing(_))));
        assert!(matches!(log.inode(), Err(TenantError::Missing(_))));
        symlink(root.path().join("secret"), dir.join("logs/latest.log")).unwrap();
        let e = log.open().unwrap_err();
        assert!(matches!(e, TenantError::Refused(_, "a symbolic link")), "{e}");
        assert!(matches!(log.inode(), Err(TenantError::Refused(_, "a symbolic link"))));
        std::fs::remove_file(dir.join("logs/latest.log")).unwrap();
        std::fs::write(dir.join("logs/latest.log"), "line\n").unwrap();
        assert_eq!(log.read_head(3).unwrap(), b"lin");
        assert!(log.inode().unwrap() > 0);
        // A linked directory on the way.
        std::fs::rename(dir.join("logs"), dir.join("real")).unwrap();
        symlink(dir.join("real"), dir.join("logs")).unwrap();
        assert!(matches!(log.open(), Err(TenantError::Refused(_, "a symbolic link"))));
        // The trusted directory itself may be a link.
        let linked = root.path().join("linked");
        symlink(&dir, &linked).unwrap();
        assert_eq!(TenantPath::new(&linked, "real/latest.log").read_head(64).unwrap(), b"line\n");
    }

    #[test]
    fn within_keeps_the_dir_trusted_and_lists_regular_files_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("srv");
        std::fs::create_dir_all(dir.join("crash-reports/sub")).unwrap();
        let p = TenantPath::within(&dir, &dir.join("run/server.pid"));
        assert_eq!((p.trusted.as_path(), p.below.len()), (dir.as_path(), 2));
        let p = TenantPath::within(&dir, Path::new("/run/mc/server.pid"));
        assert_eq!((p.trusted.as_path(), p.below.len()), (Path::new("/run/mc"), 1));
        let p = TenantPath::within(&dir, &dir.join("../server.pid"));
        assert_eq!(p.below.len(), 1);
        let reports = dir.join("crash-reports");
        std::fs::write(reports.join("a.txt"), "x").unwrap();
        symlink("/etc/hostname", reports.join("b.txt")).unwrap();
        let names = TenantPath::new(&dir, "crash-reports").regular_files().unwrap();
        assert_eq!(names, vec![OsString::from("a.txt")]);
        std::fs::rename(&reports, dir.join("real")).unwrap();
        symlink(dir.join("real"), &reports).unwrap();
        let e = TenantPath::new(&dir, "crash-reports").regular_files().unwrap_err();
        assert!(matches!(e, TenantError::Refused(_, "a symbolic link")), "{e}");
    }
}
