//! Ready-made checks for what services commonly depend on, with no heavy dependency:
//! an HTTP endpoint answering 2xx, a TCP port accepting, a file or directory writable, and free
//! disk space above a threshold.
//!
//! ```
//! use periscope_health::{Health, HealthCheck, checks};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let health = Health::builder()
//!     .check_with("postgres", checks::tcp("127.0.0.1:5432"))
//!     .check_with("embedder", checks::http_get("http://127.0.0.1:9000/health")?)
//!     .add_check(HealthCheck::new("scratch", checks::writable("/tmp")).non_critical())
//!     .add_check(HealthCheck::new("disk", checks::disk_space("/", 1 << 30)).non_critical())
//!     .build()?;
//! # let _ = health;
//! # Ok(())
//! # }
//! ```

mod fs;
mod http;
mod tcp;

pub use self::fs::{DiskSpaceCheck, WritableCheck, disk_space, writable};
pub use self::http::{HttpCheck, InvalidUrl, http_get};
pub use self::tcp::{TcpCheck, tcp};

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::check::CheckError;

/// Runs a check's blocking work (file-system calls, a host name's resolution) off the async
/// threads, one call at a time.
///
/// A blocking call stuck in the kernel (a hung NFS mount, a resolver waiting on a DNS server
/// that is down) outlives the check's timeout: aborting
/// the task cannot stop its thread. Once the run that started a call has given up on it (timed
/// out or was cancelled) while the call is still blocked, later runs fail at once instead of piling
/// up blocked threads until the runtime's blocking pool is exhausted. A run that merely overlaps
/// a call in progress (the check cloned into two [`Health`](crate::Health)es, or called
/// concurrently) waits for that call to return, then makes its own; its own timeout bounds the
/// wait.
#[derive(Clone, Debug, Default)]
struct Blocking {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    slot: Mutex<Slot>,
    /// Woken when the call in progress returns, or its run gives up on it.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Slot {
    busy: Option<Busy>,
    /// Tells calls apart, so a run only marks its own call abandoned.
    next_call: u64,
}

/// The blocking call in progress.
#[derive(Debug)]
struct Busy {
    call: u64,
    /// The run that started the call gave up on it: the call is stuck past that run's timeout.
    abandoned: bool,
}

impl Shared {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Frees the [`Blocking`] slot when the blocking call returns (or is never run).
struct Release(Arc<Shared>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.slot().busy = None;
        self.0.changed.notify_waiters();
    }
}

/// Marks the call abandoned when its run is dropped (timed out) before the call returned.
struct Abandon {
    shared: Arc<Shared>,
    call: u64,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let mut slot = self.shared.slot();
        if let Some(busy) = slot.busy.as_mut().filter(|busy| busy.call == self.call) {
            busy.abandoned = true;
            drop(slot);
            self.shared.changed.notify_waiters();
        }
    }
}

/// Resolves a `host:port` to its addresses (blocking).
type Resolve = fn(&str) -> std::io::Result<Vec<SocketAddr>>;

/// The system's resolver, as Tokio's `TcpStream::connect` uses it.
fn system_resolve(addr: &str) -> std::io::Result<Vec<SocketAddr>> {
    addr.to_socket_addrs().map(Iterator::collect)
}

/// What may hold a resolution past its check's timeout.
const DNS_HUNG: &str = "DNS resolution hung";

/// Opens the connections of the network checks. A host name is resolved on a thread of its own,
/// one resolution at a time ([`Blocking`]): Tokio resolves on its blocking pool, where a
/// resolver waiting on a DNS server that is down (tens of seconds under Kubernetes' `ndots:5`)
/// would leave one more stuck thread per run, each holding the runtime's drop at exit.
#[derive(Clone, Debug)]
struct Connector {
    blocking: Blocking,
    resolve: Resolve,
}

impl Default for Connector {
    fn default() -> Self {
        Self {
            blocking: Blocking::default(),
            resolve: system_resolve,
        }
    }
}

impl Connector {
    /// Connects to `addr` (`host:port`, or an address): a failure to resolve or connect is
    /// told by `fail`.
    async fn connect(
        &self,
        addr: &str,
        fail: impl Fn(std::io::Error) -> CheckError,
    ) -> Result<TcpStream, CheckError> {
        let addrs = match addr.parse::<SocketAddr>() {
            Ok(literal) => vec![literal],
            Err(_) => {
                let (owned, resolve) = (addr.to_owned(), self.resolve);
                self.blocking
                    .run(addr, DNS_HUNG, move || Ok(resolve(&owned)))
                    .await?
                    .map_err(&fail)?
            }
        };
        // All the addresses at once, the first to accept wins: tried one after another, an
        // address that drops the connection attempt (a stale record, a black-holed IPv6
        // route) would hold the check past its timeout while the next one answers at once.
        match addrs.as_slice() {
            [] | [_] => TcpStream::connect(addrs.as_slice()).await.map_err(fail),
            _ => {
                let attempts = addrs.iter().map(|addr| Box::pin(TcpStream::connect(*addr)));
                futures_util::future::select_ok(attempts)
                    .await
                    .map(|(stream, _others)| stream)
                    .map_err(fail)
            }
        }
    }
}

impl Blocking {
    /// Runs `work` on a thread of its own. `subject` names what it works on (a path, a
    /// `host:port`) and `hung` what may hold it, in the message of a run that finds the call
    /// before still blocked.
    async fn run<T: Send + 'static>(
        &self,
        subject: impl std::fmt::Display + Send,
        hung: &str,
        work: impl FnOnce() -> Result<T, CheckError> + Send + 'static,
    ) -> Result<T, CheckError> {
        let call = loop {
            let changed = {
                let mut slot = self.shared.slot();
                match &slot.busy {
                    None => {
                        let call = slot.next_call;
                        slot.next_call += 1;
                        slot.busy = Some(Busy {
                            call,
                            abandoned: false,
                        });
                        break call;
                    }
                    Some(busy) if busy.abandoned => {
                        // No running figure in the text: a steady failure must read the
                        // same on every probe, or each one is logged as a new failure.
                        return Err(CheckError::msg(format!(
                            "{subject}: the previous check is still blocked ({hung}?)"
                        )));
                    }
                    // Registered while the slot is locked, so no wake-up is missed.
                    Some(_) => self.shared.changed.notified(),
                }
            };
            changed.await;
        };
        let abandon = Abandon {
            shared: Arc::clone(&self.shared),
            call,
        };
        let release = Release(Arc::clone(&self.shared));
        // A thread of its own, not Tokio's blocking pool: the runtime's drop waits for every
        // blocking task still running, so a call stuck for good (the hung mount this guards
        // against) would keep the process from exiting after its server stopped. A detached
        // thread does not hold the exit; at most one is blocked per check (the slot above).
        let (sender, answer) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("periscope-check".to_owned())
            .spawn(move || {
                let result = work();
                // The slot is free before the run hears back, as when a blocking task returns:
                // a run that finds its call returned never marks it abandoned.
                drop(release);
                let _ = sender.send(result);
            });
        let result = match spawned {
            Ok(_detached) => answer.await.unwrap_or_else(|_| {
                Err(CheckError::msg("check did not finish: its thread panicked"))
            }),
            Err(error) => Err(CheckError::msg(format!(
                "check could not start a thread: {error}"
            ))),
        };
        drop(abandon);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    use super::*;

    static RESOLVES: AtomicUsize = AtomicUsize::new(0);
    static RELEASED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

    /// A resolver waiting on a DNS server that is down, until the test lets it go.
    fn hung_resolve(_: &str) -> std::io::Result<Vec<SocketAddr>> {
        RESOLVES.fetch_add(1, Ordering::SeqCst);
        let (released, wake) = &RELEASED;
        let guard = released.lock().unwrap();
        let _released = wake
            .wait_timeout_while(guard, Duration::from_secs(30), |released| !*released)
            .unwrap();
        Err(std::io::Error::other("no answer from the DNS server"))
    }

    static ADDRESSES: std::sync::OnceLock<Vec<SocketAddr>> = std::sync::OnceLock::new();

    fn two_addresses(_: &str) -> std::io::Result<Vec<SocketAddr>> {
        Ok(ADDRESSES.get().cloned().unwrap_or_default())
    }

    /// A name whose first address drops the connection attempt (its listen queue full: the
    /// kernel answers no SYN) and whose second accepts: the check connects through the
    /// second, rather than waiting on the first past its timeout.
    #[tokio::test]
    async fn a_name_whose_first_address_hangs_connects_through_the_next() {
        let full = tokio::net::TcpSocket::new_v4().unwrap();
        full.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = full.listen(1).unwrap();
        let hanging = full.local_addr().unwrap();
        // Fill its queue; it never accepts.
        let mut held = Vec::new();
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(hanging))
                .await
            {
                Ok(Ok(stream)) => held.push(stream),
                _ => break,
            }
        }
        // The first address now drops connection attempts: else this would test nothing.
        assert!(held.len() < 4, "the full queue still took connections");
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ADDRESSES
            .set(vec![hanging, open.local_addr().unwrap()])
            .unwrap();
        let connector = Connector {
            blocking: Blocking::default(),
            resolve: two_addresses,
        };
        let fail = |error: std::io::Error| CheckError::msg(format!("connect failed: {error}"));
        let connected = tokio::time::timeout(
            Duration::from_secs(2),
            connector.connect("svc.example:80", fail),
        )
        .await;
        let Ok(Ok(stream)) = connected else {
            panic!("not connected within 2 s: {connected:?}");
        };
        // Through the second address, well within the first's wait.
        assert_eq!(stream.peer_addr().unwrap(), open.local_addr().unwrap());
        drop((held, full));
    }

    /// A resolution stuck past its run's timeout leaves one blocked thread, not one per run:
    /// later runs fail at once, saying why, until it returns. An address needs no resolution.
    #[tokio::test]
    async fn a_hung_resolution_blocks_one_thread_and_fails_later_runs_at_once() {
        let connector = Connector {
            blocking: Blocking::default(),
            resolve: hung_resolve,
        };
        let fail = |error: std::io::Error| CheckError::msg(format!("connect failed: {error}"));
        let first = tokio::time::timeout(
            Duration::from_millis(50),
            connector.connect("db.example:5432", fail),
        )
        .await;
        assert!(first.is_err(), "the first run times out");
        for _ in 0..20 {
            let error = connector
                .connect("db.example:5432", fail)
                .await
                .unwrap_err();
            assert_eq!(
                error.message(),
                "db.example:5432: the previous check is still blocked (DNS resolution hung?)"
            );
        }
        assert_eq!(RESOLVES.load(Ordering::SeqCst), 1);
        // An address literal is not resolved, so the stuck resolution does not hold it back.
        let refused = connector.connect("127.0.0.1:1", fail).await.unwrap_err();
        assert!(
            refused.message().starts_with("connect failed"),
            "{refused:?}"
        );

        // Once the resolver answers, the next run resolves again.
        *RELEASED.0.lock().unwrap() = true;
        RELEASED.1.notify_all();
        let error = loop {
            let error = connector
                .connect("db.example:5432", fail)
                .await
                .unwrap_err();
            if !error.message().contains("still blocked") {
                break error;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(
            error.message(),
            "connect failed: no answer from the DNS server"
        );
        assert_eq!(RESOLVES.load(Ordering::SeqCst), 2);
    }
}
