//! [`SharedMemory`]: named POSIX shared memory, the same objects as Python's
//! `multiprocessing.shared_memory.SharedMemory`, and the resource tracker that removes the
//! segments of a creator that died without `unlink`.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};

use multiproc_core::reduction;
use rustix::fs::Mode;
use rustix::shm;
use serde::{Deserialize, Serialize};
use tracker::Tracker;

use crate::Error;
use crate::raw::Mapping;

/// Python's limit for a generated name is 14 characters (macOS); `psm_` plus 8 hex digits.
const PREFIX: &str = "psm_";

/// A named block of shared memory (Python's `multiprocessing.shared_memory.SharedMemory`).
///
/// The name is the POSIX name without its leading `/`, as Python shows it: a segment created
/// here can be attached by Python with `SharedMemory(name=...)` and the other way round.
///
/// Access model: the bytes may be changed by any process or thread at any time, so they are
/// reached by copying ([`read`](Self::read), [`write`](Self::write), with relaxed atomic
/// accesses on the segment's side: safe from several threads at once), never as a `&mut [u8]`
/// in safe code;
/// the zero-copy [`as_slice`](Self::as_slice)/[`as_mut_slice`](Self::as_mut_slice) give
/// views, for a caller who ensures exclusivity (with a lock, an event, or by joining
/// the writers).
///
/// `close` unmaps it in this process; `unlink` removes the name (the memory lives on until every
/// process has closed it). A segment that its creator never unlinked is removed when the
/// creator exits or dies, by a resource tracker (as Python's), unless it was created
/// [untracked](SharedMemory::create_untracked) to outlive its creator.
///
/// [`try_clone`](Self::try_clone) gives a second handle (to hand one to each of several
/// children while keeping one).
///
/// ```
/// use multiproc_shm::SharedMemory;
///
/// let shm = SharedMemory::create(None, 4096)?;
/// shm.write(0, &[1, 2, 3, 4, 5])?;
/// let other = SharedMemory::attach(shm.name())?;
/// let mut five = [0u8; 5];
/// other.read(0, &mut five)?;
/// assert_eq!(five, [1, 2, 3, 4, 5]);
/// shm.unlink()?;
/// # Ok::<(), multiproc_shm::Error>(())
/// ```
pub struct SharedMemory {
    name: String,
    size: usize,
    fd: OwnedFd,
    map: Option<Mapping>,
    tracked: bool,
}

/// The name without its one optional leading `/`, if it is a valid POSIX shared memory name:
/// not empty, not `.` or `..`, no further `/`, no NUL, at most 250 bytes.
fn bare_name(name: &str) -> Result<&str, Error> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty()
        || bare == "."
        || bare == ".."
        || bare.contains('/')
        || bare.contains('\0')
        || bare.len() > 250
    {
        return Err(Error::InvalidName(name.to_string()));
    }
    Ok(bare)
}

/// The name `shm_open` takes for a bare name.
fn posix_name(bare: &str) -> String {
    format!("/{bare}")
}

fn random_name() -> String {
    let mut bytes = [0u8; 4];
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    format!(
        "{PREFIX}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

impl SharedMemory {
    /// Creates a new segment of `size` bytes (zeroed), named `name` or a generated `psm_…` name,
    /// tracked: removed when this process ends (normally or not) unless unlinked before.
    ///
    /// A name may start with one `/` (Python's names do not; POSIX's do), which
    /// [`name`](Self::name) leaves out.
    ///
    /// Errors: [`Error::Exists`] if the name is taken, [`Error::InvalidSize`] for size 0,
    /// [`Error::InvalidName`] for a name that is empty, `.` or `..`, longer than 250 bytes, or
    /// holds a `/` (after its optional first one) or a NUL.
    pub fn create(name: Option<&str>, size: usize) -> Result<SharedMemory, Error> {
        Self::create_with(name, size, true)
    }

    /// Like [`create`](Self::create), but not tracked: the segment outlives this process until
    /// someone unlinks it (Python 3.13's `track=False`).
    pub fn create_untracked(name: Option<&str>, size: usize) -> Result<SharedMemory, Error> {
        Self::create_with(name, size, false)
    }

    fn create_with(name: Option<&str>, size: usize, track: bool) -> Result<SharedMemory, Error> {
        if size == 0 {
            return Err(Error::InvalidSize);
        }
        let flags = shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR;
        let (bare, fd) = loop {
            let bare = match name {
                Some(n) => bare_name(n)?.to_string(),
                None => random_name(),
            };
            match shm::open(
                posix_name(&bare).as_str(),
                flags,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => break (bare, fd),
                // A generated name that happens to exist: draw another.
                Err(rustix::io::Errno::EXIST) if name.is_none() => continue,
                Err(rustix::io::Errno::EXIST) => return Err(Error::Exists(bare)),
                Err(e) => {
                    return Err(Error::Os {
                        op: "shm_open",
                        source: e.into(),
                    });
                }
            }
        };
        let made = (|| {
            rustix::fs::ftruncate(&fd, size as u64)?;
            Mapping::new(&fd, size)
        })();
        let map = match made {
            Ok(map) => map,
            Err(e) => {
                let _ = shm::unlink(posix_name(&bare).as_str());
                return Err(Error::Os {
                    op: "creating shared memory",
                    source: e,
                });
            }
        };
        if track {
            Tracker::register(&bare);
        }
        Ok(SharedMemory {
            name: bare,
            size,
            fd,
            map: Some(map),
            tracked: track,
        })
    }

    /// Attaches to the existing segment `name` (Python's `SharedMemory(name=...)`).
    ///
    /// Errors: [`Error::NotFound`] if there is none, [`Error::InvalidName`] as for
    /// [`create`](Self::create).
    pub fn attach(name: &str) -> Result<SharedMemory, Error> {
        let bare = bare_name(name)?.to_string();
        let fd = match shm::open(posix_name(&bare).as_str(), shm::OFlags::RDWR, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Err(Error::NotFound(bare)),
            Err(e) => {
                return Err(Error::Os {
                    op: "shm_open",
                    source: e.into(),
                });
            }
        };
        SharedMemory::from_fd(bare, fd, false)
    }

    fn from_fd(name: String, fd: OwnedFd, tracked: bool) -> Result<SharedMemory, Error> {
        let size = rustix::fs::fstat(&fd)
            .map_err(|e| Error::Os {
                op: "fstat",
                source: e.into(),
            })?
            .st_size as usize;
        if size == 0 {
            return Err(Error::InvalidSize);
        }
        let map = Mapping::new(&fd, size).map_err(|e| Error::Os {
            op: "mmap",
            source: e,
        })?;
        Ok(SharedMemory {
            name,
            size,
            fd,
            map: Some(map),
            tracked,
        })
    }

    /// Another handle on the same segment (Python has none: it would open the name again): a
    /// duplicate of the fd and a mapping of its own, so it can be handed to a child while this
    /// one stays, and closed independently. It unlinks like this one (a tracked segment stays
    /// tracked by this process's tracker).
    ///
    /// Errors: [`Error::Closed`] once this handle is closed; [`Error::Os`] if the fd cannot be
    /// duplicated or mapped.
    ///
    /// ```
    /// use multiproc_shm::SharedMemory;
    ///
    /// let shm = SharedMemory::create(None, 4096)?;
    /// let mut other = shm.try_clone()?;
    /// other.write(0, b"hi")?;
    /// other.close();
    /// let mut two = [0u8; 2];
    /// shm.read(0, &mut two)?;
    /// assert_eq!(&two, b"hi");
    /// shm.unlink()?;
    /// # Ok::<(), multiproc_shm::Error>(())
    /// ```
    pub fn try_clone(&self) -> Result<SharedMemory, Error> {
        self.mapping()?;
        let fd = self.fd.try_clone().map_err(|e| Error::Os {
            op: "dup",
            source: e,
        })?;
        let map = Mapping::new(&fd, self.size).map_err(|e| Error::Os {
            op: "mmap",
            source: e,
        })?;
        Ok(SharedMemory {
            name: self.name.clone(),
            size: self.size,
            fd,
            map: Some(map),
            tracked: self.tracked,
        })
    }

    /// The name, without the leading `/` (as Python's `name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size in bytes (the segment's size, which may exceed what the creator asked for).
    pub fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn mapping(&self) -> Result<&Mapping, Error> {
        self.map.as_ref().ok_or(Error::Closed)
    }

    /// Copies `out.len()` bytes starting at `offset` out of the segment.
    ///
    /// Safe from any number of threads at once: the segment's bytes are read with relaxed
    /// atomic loads (words, and bytes at the edges), so a concurrent `write` (here or in
    /// another process) races in value, never in Rust's memory model; order the two with a
    /// lock or an event when the bytes must be consistent.
    ///
    /// Errors: [`Error::OutOfRange`] if the range does not fit, [`Error::Closed`] after
    /// [`close`](Self::close).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), Error> {
        self.check(offset, out.len())?;
        self.mapping()?.read(offset, out);
        Ok(())
    }

    /// Copies `data` into the segment at `offset`, with relaxed atomic stores (see
    /// [`read`](Self::read)).
    ///
    /// Errors: [`Error::OutOfRange`] if the range does not fit, [`Error::Closed`] after
    /// [`close`](Self::close).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        self.check(offset, data.len())?;
        self.mapping()?.write(offset, data);
        Ok(())
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// The address of the first byte in this process (for FFI or atomics), or an error once
    /// closed.
    pub fn as_ptr(&self) -> Result<*mut u8, Error> {
        Ok(self.mapping()?.as_ptr())
    }

    /// Unmaps the segment in this process (Python's `close()`); idempotent.
    pub fn close(&mut self) {
        self.map = None;
    }

    /// Removes the name (Python's `unlink()`): no process can attach any more; the memory goes
    /// when every process has closed it. Also stops tracking it.
    pub fn unlink(&self) -> Result<(), Error> {
        match shm::unlink(posix_name(&self.name).as_str()) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) => return Err(Error::NotFound(self.name.clone())),
            Err(e) => {
                return Err(Error::Os {
                    op: "shm_unlink",
                    source: e.into(),
                });
            }
        }
        if self.tracked {
            Tracker::unregister(&self.name);
        }
        Ok(())
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("closed", &self.map.is_none())
            .finish()
    }
}

/// Handed to a child, a `SharedMemory` carries its fd (no second `shm_open`, so it works even if
/// the name was unlinked meanwhile) and its name; the child's copy is not tracked (the creator's
/// tracker is in charge).
impl Serialize for SharedMemory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct WireRef<'a> {
            name: &'a str,
            #[serde(serialize_with = "ser_fd")]
            fd: &'a OwnedFd,
        }
        fn ser_fd<S: serde::Serializer>(fd: &&OwnedFd, s: S) -> Result<S::Ok, S::Error> {
            reduction::serialize_fd(fd.as_fd(), s)
        }
        WireRef {
            name: &self.name,
            fd: &self.fd,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            name: String,
            #[serde(with = "reduction::fd")]
            fd: OwnedFd,
        }
        let w = Wire::deserialize(d)?;
        SharedMemory::from_fd(w.name, w.fd, false).map_err(serde::de::Error::custom)
    }
}

mod tracker {
    //! The resource tracker: one helper process per creating process, fed names through a
    //! pipe. When the pipe reaches end-of-file (the creator exited, normally or killed), it
    //! unlinks every name still registered and reports them, as Python's tracker does.

    use std::io::{BufRead, Write};
    use std::os::fd::OwnedFd;
    use std::sync::Mutex;

    use multiproc_core::reduction;
    use serde::{Deserialize, Serialize};

    /// The read end of the tracker's pipe, as a helper argument.
    #[derive(Serialize, Deserialize)]
    struct ReadEnd(#[serde(with = "reduction::fd")] OwnedFd);

    /// This process's tracker: the write end of its pipe and the pid that started it.
    static TRACKER: Mutex<Option<(OwnedFd, u32)>> = Mutex::new(None);

    /// Drops the tracker pipe that this process inherited from its parent by `fork`, if it
    /// holds one: the parent's tracker must see end-of-file when the parent ends, not when
    /// its last fork child does. Registered as an after-fork hook when the tracker starts, so
    /// every fork child runs it before its target.
    pub(crate) fn forget_tracker_in_fork_child() {
        let _fork = multiproc_core::fork_guard();
        let mut slot = TRACKER.lock().unwrap_or_else(|p| p.into_inner());
        forget_inherited(&mut slot);
    }

    /// Closes an inherited (another process's) tracker pipe in `slot`.
    fn forget_inherited(slot: &mut Option<(OwnedFd, u32)>) {
        let me = multiproc_core::current_pid();
        if slot.as_ref().is_some_and(|(_, owner)| *owner != me) {
            *slot = None;
        }
    }

    pub(super) struct Tracker;

    impl Tracker {
        /// Writes one line to this process's tracker, starting it first if `start_if_none`.
        fn send(line: &str, start_if_none: bool) {
            // No fork while the slot is locked: a fork child's hook takes it (§1b.6).
            let _fork = multiproc_core::fork_guard();
            let mut slot = TRACKER.lock().unwrap_or_else(|p| p.into_inner());
            // A fork child does not write to its parent's tracker (it may outlive it).
            forget_inherited(&mut slot);
            if slot.is_none() && start_if_none {
                *slot = start().map(|w| (w, multiproc_core::current_pid()));
                // A fork child must not keep the pipe open: the tracker learns that its
                // creator died from end-of-file, which a fork child's copy would delay.
                multiproc_core::register_after_fork(forget_tracker_in_fork_child);
            }
            if let Some((w, _)) = slot.as_ref() {
                // One write of less than PIPE_BUF bytes: never interleaved with another.
                let _ = rustix::io::write(w, line.as_bytes());
            }
        }

        pub(super) fn register(name: &str) {
            Self::send(&format!("R {name}\n"), true);
        }

        /// Stops tracking `name`; nothing to do when this process has no tracker (a fork
        /// child unlinking its parent's segment: the parent's tracker finds it gone).
        pub(super) fn unregister(name: &str) {
            Self::send(&format!("U {name}\n"), false);
        }
    }

    fn start() -> Option<OwnedFd> {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
        multiproc_core::spawn_helper(track, ReadEnd(r)).ok()?;
        Some(w)
    }

    /// The tracker's main: registered names until end-of-file, then unlink what is left.
    fn track(r: ReadEnd) {
        let mut live: Vec<String> = Vec::new();
        let reader = std::io::BufReader::new(std::fs::File::from(r.0));
        for line in reader.lines() {
            let Ok(line) = line else { break };
            match line.split_once(' ') {
                Some(("R", name)) => live.push(name.to_string()),
                Some(("U", name)) => live.retain(|n| n != name),
                _ => {}
            }
        }
        let mut leaked = Vec::new();
        for name in live {
            if rustix::shm::unlink(format!("/{name}").as_str()).is_ok() {
                leaked.push(name);
            }
        }
        if !leaked.is_empty() {
            let _ = writeln!(
                std::io::stderr(),
                "multiproc resource tracker: removed {} shared memory segment(s) its creator did not unlink: {}",
                leaked.len(),
                leaked.join(", ")
            );
        }
    }
}
