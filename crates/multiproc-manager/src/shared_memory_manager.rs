//! [`SharedMemoryManager`]: a manager whose server unlinks the shared-memory segments made
//! through it when it stops (Python's `multiprocessing.managers.SharedMemoryManager`).

use std::ops::Deref;

use multiproc_shm::{Item, ShareableList, SharedMemory};

use crate::error::{ManagerError, Result};
use crate::manager::{Manager, ManagerBuilder};
use crate::protocol::Request;

/// A manager that tracks the [`SharedMemory`] segments and [`ShareableList`]s it makes and
/// unlinks them all when it shuts down (or is dropped), so nothing is left in `/dev/shm`.
///
/// The segments are created in the calling process (which maps them at once) and their names
/// are handed to the server, as Python does. Should the server be killed before it can unlink
/// them, the resource tracker of the process tree that created them does so when the tree
/// ends. Everything a [`Manager`] offers is there too (through `Deref`).
///
/// ```
/// use multiproc_manager::SharedMemoryManager;
///
/// let smm = SharedMemoryManager::start()?;
/// let shm = smm.shared_memory(128)?;
/// let list = smm.shareable_list([1i64, 2, 3])?;
/// shm.write(0, b"hello")?;
/// assert_eq!(list.get(2)?.as_int(), Some(3));
/// let names = [shm.name().to_string(), list.name().to_string()];
/// smm.shutdown()?;
/// for name in names {
///     assert!(!std::path::Path::new("/dev/shm").join(name).exists());
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SharedMemoryManager {
    manager: Manager,
}

impl SharedMemoryManager {
    /// Starts the server process (Python's `SharedMemoryManager().start()`).
    ///
    /// # Errors
    ///
    /// See [`ManagerBuilder::start`].
    pub fn start() -> Result<SharedMemoryManager> {
        Self::start_with(Manager::builder())
    }

    /// Starts the server process with `builder`'s options (start method, address, authkey).
    ///
    /// # Errors
    ///
    /// See [`ManagerBuilder::start`].
    pub fn start_with(builder: ManagerBuilder) -> Result<SharedMemoryManager> {
        Ok(SharedMemoryManager {
            manager: builder.start()?,
        })
    }

    fn track(&self, name: &str) -> Result<()> {
        self.manager
            .server_request(&Request::TrackSegment { name })?;
        Ok(())
    }

    /// A new segment of `size` bytes, unlinked when the manager shuts down (Python's
    /// `smm.SharedMemory(size)`).
    ///
    /// # Errors
    ///
    /// The segment cannot be made, or the server is gone.
    pub fn shared_memory(&self, size: usize) -> Result<SharedMemory> {
        let shm = SharedMemory::create(None, size).map_err(shm_error)?;
        if let Err(e) = self.track(shm.name()) {
            let _ = shm.unlink();
            return Err(e);
        }
        Ok(shm)
    }

    /// A new [`ShareableList`] of `items`, unlinked when the manager shuts down (Python's
    /// `smm.ShareableList(sequence)`).
    ///
    /// # Errors
    ///
    /// The list cannot be made, or the server is gone.
    pub fn shareable_list(
        &self,
        items: impl IntoIterator<Item = impl Into<Item>>,
    ) -> Result<ShareableList> {
        let list = ShareableList::new(items).map_err(shm_error)?;
        if let Err(e) = self.track(list.name()) {
            let _ = list.unlink();
            return Err(e);
        }
        Ok(list)
    }

    /// The names of the segments the server will unlink (Python's `list_segments`, a
    /// private method there).
    ///
    /// # Errors
    ///
    /// The server is gone.
    pub fn segments(&self) -> Result<Vec<String>> {
        let body = self.manager.server_request(&Request::ListSegments)?;
        postcard::from_bytes(&body).map_err(|e| ManagerError::Decode(e.to_string()))
    }

    /// Forgets a segment (it will not be unlinked at shutdown; Python's `release_segment`).
    ///
    /// # Errors
    ///
    /// The server is gone.
    pub fn release(&self, name: &str) -> Result<()> {
        self.manager
            .server_request(&Request::ReleaseSegment { name })?;
        Ok(())
    }
}

fn shm_error(e: multiproc_shm::Error) -> ManagerError {
    ManagerError::SharedMemory(e.to_string())
}

impl Deref for SharedMemoryManager {
    type Target = Manager;

    fn deref(&self) -> &Manager {
        &self.manager
    }
}
