//! [`Manager`]: starts (or connects to) a server and makes its objects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use multiproc_core::{AnyFnRef, Context, FnRef, Process, StartMethod};
use multiproc_ipc::{Address, Connection, Listener};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::client::{Args, ServerHandle, forget, server};
use crate::custom::Managed;
use crate::error::{ManagerError, Result};
use crate::protocol::Request;
use crate::proxies::*;
use crate::server::{HANDSHAKE_TIMEOUT, Registry, Shared};

/// How long `shutdown` waits for the server after asking it to stop, and again after
/// terminating it (Python's `shutdown_timeout`, 1 s by default).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// How a manager's server is told to start.
#[derive(Debug, Serialize, Deserialize)]
struct ServerArgs {
    address: Address,
    authkey: Vec<u8>,
    handshake_timeout: Duration,
    registry: Vec<(String, AnyFnRef)>,
    report: Connection,
}

/// The options of a manager: made by [`Manager::builder`].
#[derive(Debug, Default)]
pub struct ManagerBuilder {
    address: Option<Address>,
    authkey: Option<Vec<u8>>,
    handshake_timeout: Option<Duration>,
    method: Option<StartMethod>,
    registry: Vec<(String, AnyFnRef)>,
}

static MANAGERS: AtomicU64 = AtomicU64::new(1);

fn random_name() -> Vec<u8> {
    let mut r = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty());
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("multiproc-manager-{}-{hex}", std::process::id()).into_bytes()
}

impl ManagerBuilder {
    /// The address to serve on: a Unix socket path, an abstract name or a TCP address
    /// (`"127.0.0.1:50000"`; port 0 picks a free port). By default a fresh abstract Unix
    /// socket name, reachable from this machine only.
    pub fn address(mut self, address: impl Into<Address>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The key clients must prove they know (Python's `authkey`); by default this process
    /// tree's own authkey ([`current_process().authkey`](multiproc_core::current_process)),
    /// which every child inherits.
    pub fn authkey(mut self, authkey: impl AsRef<[u8]>) -> Self {
        self.authkey = Some(authkey.as_ref().to_vec());
        self
    }

    /// How long a connecting client may take to complete the authkey handshake before the
    /// server drops it (10 s by default). A client that stalls holds only its own thread
    /// meanwhile: the others are served.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// The start method of the server process (by default the current one).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// The start method of `context`.
    pub fn context(self, context: &Context) -> Self {
        self.start_method(context.start_method())
    }

    /// Registers a user type (Python's `register(typeid, callable)`): the server can then
    /// hold objects of `T` ([`Manager::create`]) and run their exposed methods.
    ///
    /// # Errors
    ///
    /// [`ManagerError::FnRef`] when this program cannot name its functions across processes.
    pub fn register<T: Managed>(mut self) -> Result<Self> {
        let handler = FnRef::new(crate::custom::handle::<T>)?.erase();
        self.registry
            .push((std::any::type_name::<T>().to_string(), handler));
        Ok(self)
    }

    fn authkey_or_default(&self) -> Vec<u8> {
        self.authkey
            .clone()
            .unwrap_or_else(|| multiproc_core::current_process().authkey.to_vec())
    }

    fn address_or_default(&self) -> Address {
        self.address
            .clone()
            .unwrap_or_else(|| Address::Abstract(random_name()))
    }

    /// Starts the server process (named `SyncManager-N`, ignoring SIGINT, ended with its
    /// parent) and returns the manager that owns it (Python's `Manager()` /
    /// `BaseManager.start()`).
    ///
    /// # Errors
    ///
    /// The process cannot start, or the server cannot bind its address (in use, bad path).
    pub fn start(self) -> Result<Manager> {
        let address = self.address_or_default();
        let authkey = self.authkey_or_default();
        let (report, mut reader) = multiproc_ipc::pipe()?;
        let args = ServerArgs {
            address,
            authkey: authkey.clone(),
            handshake_timeout: self.handshake_timeout.unwrap_or(HANDSHAKE_TIMEOUT),
            registry: self.registry,
            report,
        };
        let mut p = match self.method {
            Some(m) => multiproc_core::get_context(m).process(server_main, args),
            None => Process::new(server_main, args),
        };
        let n = MANAGERS.fetch_add(1, Ordering::Relaxed);
        p.set_name(format!("SyncManager-{n}"));
        p.set_daemon(true)?;
        p.start()?;
        // The server reports the address it bound (a TCP port 0 becomes a real port).
        let bound: std::result::Result<Address, String> =
            match reader.recv_timeout(Duration::from_secs(60)) {
                Ok(r) => r,
                Err(e) => {
                    let _ = p.kill();
                    let _ = p.join();
                    return Err(ManagerError::ServerGone {
                        address: "(starting)".into(),
                        reason: format!("the server process did not report its address: {e}"),
                    });
                }
            };
        let address = match bound {
            Ok(a) => a,
            Err(msg) => {
                let _ = p.join_timeout(SHUTDOWN_TIMEOUT);
                return Err(ManagerError::Connection(
                    multiproc_ipc::Error::InvalidAddress(msg),
                ));
            }
        };
        Ok(Manager {
            server: fresh_server(&address, &authkey),
            address,
            owner: Owner::Process(Mutex::new(Some(p))),
            shut: AtomicBool::new(false),
        })
    }

    /// Serves in this process, on background threads, and returns the manager that owns the
    /// server (Python's `get_server()`; [`Manager::join`] is its `serve_forever`). This is how
    /// a program offers its objects to others over TCP.
    ///
    /// # Errors
    ///
    /// The address cannot be bound.
    pub fn serve(self) -> Result<Manager> {
        let address = self.address_or_default();
        let authkey = self.authkey_or_default();
        let registry: Registry = self.registry.into_iter().collect();
        let listener = Listener::builder().address(address).bind()?;
        let address = listener.address().clone();
        let timeout = self.handshake_timeout.unwrap_or(HANDSHAKE_TIMEOUT);
        let shared = Arc::new(Shared::new(
            listener,
            Some(authkey.clone()),
            timeout,
            registry,
        ));
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("manager-server".into())
                .spawn(move || shared.serve_forever())
                .map_err(|e| ManagerError::Connection(e.into()))?
        };
        Ok(Manager {
            server: fresh_server(&address, &authkey),
            address,
            owner: Owner::Thread(Mutex::new(Some(thread))),
            shut: AtomicBool::new(false),
        })
    }
}

/// The handle of a server just started at `address`: a new one (a server that was there
/// before, and this process's connections to it, are forgotten).
fn fresh_server(address: &Address, authkey: &[u8]) -> Arc<ServerHandle> {
    forget(address);
    server(address, Some(authkey))
}

fn server_main(args: ServerArgs) {
    multiproc_core::ignore_interrupts();
    let ServerArgs {
        address,
        authkey,
        handshake_timeout,
        registry,
        mut report,
    } = args;
    let listener = match Listener::builder().address(address).bind() {
        Ok(l) => l,
        Err(e) => {
            let _ = report.send(&Err::<Address, String>(e.to_string()));
            return;
        }
    };
    let _ = report.send(&Ok::<Address, String>(listener.address().clone()));
    drop(report);
    let shared = Arc::new(Shared::new(
        listener,
        Some(authkey),
        handshake_timeout,
        registry.into_iter().collect(),
    ));
    shared.serve_forever();
}

enum Owner {
    /// A server process this manager started.
    Process(Mutex<Option<Process>>),
    /// A server in this process.
    Thread(Mutex<Option<JoinHandle<()>>>),
    /// A server someone else runs.
    None,
}

/// A manager: a server holding shared objects, and the means to make them (Python's
/// `SyncManager`).
///
/// ```
/// use multiproc_manager::Manager;
///
/// let mgr = Manager::start()?;
/// let d = mgr.dict::<String, i64>()?;
/// let l = mgr.list::<String>()?;
/// d.set("answer", &42)?;
/// l.append(&"hello".to_string())?;
/// assert_eq!(d.get("answer")?, Some(42));
/// assert_eq!(l.to_vec()?, vec!["hello".to_string()]);
/// mgr.shutdown()?; // also when `mgr` is dropped
/// # Ok::<(), multiproc_manager::ManagerError>(())
/// ```
pub struct Manager {
    server: Arc<ServerHandle>,
    address: Address,
    owner: Owner,
    shut: AtomicBool,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("address", &self.address)
            .field(
                "owner",
                &match self.owner {
                    Owner::Process(_) => "process",
                    Owner::Thread(_) => "thread",
                    Owner::None => "connected",
                },
            )
            .finish()
    }
}

impl Manager {
    /// Starts a manager with the default options (Python's `multiprocessing.Manager()`).
    ///
    /// # Errors
    ///
    /// See [`ManagerBuilder::start`].
    pub fn start() -> Result<Manager> {
        Manager::builder().start()
    }

    /// The options of a manager.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// Connects to a running server (Python's `BaseManager(address, authkey).connect()`):
    /// dropping the returned manager leaves the server running.
    ///
    /// # Errors
    ///
    /// Nothing listens there, or the authkey is wrong
    /// ([`ManagerError::Connection`] with an authentication error).
    pub fn connect(address: impl Into<Address>, authkey: impl AsRef<[u8]>) -> Result<Manager> {
        let address = address.into();
        // Check the key on a connection of its own before this process uses it for the
        // server (a wrong key must not spoil the proxies that already work).
        multiproc_ipc::Client::builder(address.clone())
            .authkey(authkey.as_ref())
            .timeout(Duration::from_secs(10))
            .connect()
            .map_err(|e| match e {
                multiproc_ipc::Error::Authentication(_) => ManagerError::Connection(e),
                e => ManagerError::ServerGone {
                    address: address.to_string(),
                    reason: e.to_string(),
                },
            })?;
        let server = server(&address, Some(authkey.as_ref()));
        server.simple(&Request::Ping)?;
        Ok(Manager {
            server,
            address,
            owner: Owner::None,
            shut: AtomicBool::new(false),
        })
    }

    /// The server's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The pid of the server process, for a manager that started one.
    pub fn pid(&self) -> Option<u32> {
        match &self.owner {
            Owner::Process(p) => p.lock().as_ref().and_then(Process::pid),
            _ => None,
        }
    }

    fn make<P: Proxy>(&self, init: &Args) -> Result<P> {
        self.check()?;
        let obj = self.server.create(P::kind(), P::types(), init)?;
        Ok(wrap(obj))
    }

    fn check(&self) -> Result<()> {
        if self.shut.load(Ordering::Acquire) {
            Err(ManagerError::State("shut down"))
        } else {
            Ok(())
        }
    }

    fn args(&self) -> Args {
        Args::for_server(&self.address)
    }

    /// A new empty dict.
    pub fn dict<K, V>(&self) -> Result<DictProxy<K, V>>
    where
        K: Serialize + serde::de::DeserializeOwned,
        V: Serialize + serde::de::DeserializeOwned,
    {
        self.make(&self.args())
    }

    /// A new dict holding `entries`.
    pub fn dict_from<K, V, I>(&self, entries: I) -> Result<DictProxy<K, V>>
    where
        K: Serialize + serde::de::DeserializeOwned,
        V: Serialize + serde::de::DeserializeOwned,
        I: IntoIterator<Item = (K, V)>,
    {
        let mut a = self.args();
        for (k, v) in entries {
            a.value(&k)?;
            a.value(&v)?;
        }
        self.make(&a)
    }

    /// A new empty list.
    pub fn list<T: Serialize + serde::de::DeserializeOwned>(&self) -> Result<ListProxy<T>> {
        self.make(&self.args())
    }

    /// A new list holding `items`.
    pub fn list_from<T, I>(&self, items: I) -> Result<ListProxy<T>>
    where
        T: Serialize + serde::de::DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let mut a = self.args();
        for v in items {
            a.value(&v)?;
        }
        self.make(&a)
    }

    /// A new namespace (Python's `Namespace()`).
    pub fn namespace(&self) -> Result<NamespaceProxy> {
        self.make(&self.args())
    }

    /// A new value (Python's `Value(typecode, value)`).
    pub fn value<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        value: &T,
    ) -> Result<ValueProxy<T>> {
        let mut a = self.args();
        a.value(value)?;
        self.make(&a)
    }

    /// A new fixed-length array holding `items` (Python's `Array(typecode, sequence)`).
    pub fn array<T, I>(&self, items: I) -> Result<ArrayProxy<T>>
    where
        T: Serialize + serde::de::DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let mut a = self.args();
        for v in items {
            a.value(&v)?;
        }
        self.make(&a)
    }

    /// A new unbounded queue (Python's `Queue()`).
    pub fn queue<T: Serialize + serde::de::DeserializeOwned>(&self) -> Result<QueueProxy<T>> {
        self.queue_with_maxsize(0)
    }

    /// A new queue holding at most `maxsize` items (0: unbounded).
    pub fn queue_with_maxsize<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        maxsize: usize,
    ) -> Result<QueueProxy<T>> {
        let mut a = self.args();
        a.plain(&(maxsize as u64));
        self.make(&a)
    }

    /// A new unbounded joinable queue (Python's `JoinableQueue()`).
    pub fn joinable_queue<T: Serialize + serde::de::DeserializeOwned>(
        &self,
    ) -> Result<JoinableQueueProxy<T>> {
        let mut a = self.args();
        a.plain(&0u64);
        self.make(&a)
    }

    /// A new lock.
    pub fn lock(&self) -> Result<LockProxy> {
        self.make(&self.args())
    }

    /// A new re-entrant lock.
    pub fn rlock(&self) -> Result<RLockProxy> {
        self.make(&self.args())
    }

    /// A new semaphore with counter `value`.
    pub fn semaphore(&self, value: u64) -> Result<SemaphoreProxy> {
        let mut a = self.args();
        a.plain(&value);
        self.make(&a)
    }

    /// A new bounded semaphore with counter `value`.
    pub fn bounded_semaphore(&self, value: u64) -> Result<BoundedSemaphoreProxy> {
        let mut a = self.args();
        a.plain(&value);
        self.make(&a)
    }

    /// A new condition variable (with its own re-entrant lock).
    pub fn condition(&self) -> Result<ConditionProxy> {
        self.make(&self.args())
    }

    /// A new event.
    pub fn event(&self) -> Result<EventProxy> {
        self.make(&self.args())
    }

    /// A new barrier for `parties` callers.
    pub fn barrier(&self, parties: usize) -> Result<BarrierProxy> {
        let mut a = self.args();
        a.plain(&(parties as u64));
        self.make(&a)
    }

    /// A new object of a registered type `T` (see [`managed!`](crate::managed) and
    /// [`ManagerBuilder::register`]), starting as `value`.
    ///
    /// # Errors
    ///
    /// [`NotExposed`](crate::RemoteErrorKind::NotExposed) when `T` was not registered with
    /// this manager's server.
    pub fn create<T: Managed>(&self, value: T) -> Result<T::Proxy> {
        let mut a = self.args();
        a.value(&value)?;
        self.make(&a)
    }

    /// Publishes `proxy`'s object under `name`: other clients find it with
    /// [`get`](Self::get) (Python registers a `get_queue` callable for this). The server
    /// keeps the object while it is published.
    pub fn publish<P: Proxy>(&self, name: &str, proxy: &P) -> Result<()> {
        self.server.publish(name, proxy.object().id())
    }

    /// The object published under `name`, as a proxy of type `P`
    /// ([`NoSuchName`](crate::RemoteErrorKind::NoSuchName) when none is,
    /// [`TypeMismatch`](crate::RemoteErrorKind::TypeMismatch) when it has other types).
    pub fn get<P: Proxy>(&self, name: &str) -> Result<P> {
        let obj = self.server.lookup(name, P::kind(), P::types())?;
        Ok(wrap(obj))
    }

    /// A server-level request; the reply's body.
    pub(crate) fn server_request(&self, request: &Request<'_>) -> Result<Vec<u8>> {
        self.check()?;
        self.server.simple(request)
    }

    /// How many objects the server holds (Python's `_number_of_objects()`).
    pub fn number_of_objects(&self) -> Result<usize> {
        let body = self.server.simple(&Request::NumberOfObjects)?;
        postcard::from_bytes::<u64>(&body)
            .map(|n| n as usize)
            .map_err(|e| ManagerError::Decode(e.to_string()))
    }

    /// Stops the server (idempotent): asks it to stop, waits up to a second, then terminates
    /// it, then kills it (Python's `shutdown`). For a manager made by
    /// [`connect`](Self::connect) it does nothing: the server, and proxies of it, go on.
    ///
    /// # Errors
    ///
    /// Waiting for the server process failed.
    pub fn shutdown(&self) -> Result<()> {
        if self.shut.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Owner::None = self.owner {
            // A connected manager leaves the server, and this process's proxies of it, alone.
            return Ok(());
        }
        let r = self.stop_server();
        self.server.close();
        forget(&self.address);
        r
    }

    fn stop_server(&self) -> Result<()> {
        match &self.owner {
            Owner::None => Ok(()),
            Owner::Thread(t) => {
                let _ = self.server.shutdown(SHUTDOWN_TIMEOUT);
                if let Some(t) = t.lock().take() {
                    let _ = t.join();
                }
                Ok(())
            }
            Owner::Process(p) => {
                let p = p.lock().take();
                let Some(p) = p else { return Ok(()) };
                let _ = self.server.shutdown(SHUTDOWN_TIMEOUT);
                if p.join_timeout(SHUTDOWN_TIMEOUT)?.is_none() {
                    let _ = p.terminate();
                    if p.join_timeout(SHUTDOWN_TIMEOUT)?.is_none() {
                        let _ = p.kill();
                        p.join()?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Waits until the server stops (for a server in this process: Python's
    /// `serve_forever()`; for a server process: its `join`).
    ///
    /// # Errors
    ///
    /// Waiting for the server process failed.
    pub fn join(&self) -> Result<()> {
        match &self.owner {
            Owner::None => Ok(()),
            Owner::Thread(t) => {
                let t = t.lock().take();
                if let Some(t) = t {
                    let _ = t.join();
                }
                Ok(())
            }
            Owner::Process(p) => {
                if let Some(p) = p.lock().as_ref() {
                    p.join()?;
                }
                Ok(())
            }
        }
    }

    /// [`join`](Self::join) for at most `timeout` (a server process only); whether it ended.
    ///
    /// # Errors
    ///
    /// Waiting for the server process failed.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool> {
        match &self.owner {
            Owner::Process(p) => match p.lock().as_ref() {
                Some(p) => Ok(p.join_timeout(timeout)?.is_some()),
                None => Ok(true),
            },
            _ => Ok(true),
        }
    }
}

impl Drop for Manager {
    /// Shuts an owned server down (Python's context-manager exit).
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
