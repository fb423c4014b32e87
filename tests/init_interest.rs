//! `Observability::init` while other threads meet callsites for the first time: none of those
//! callsites stays cached as never enabled, so none of their lines is lost. Its own binary:
//! `init` installs the global subscriber once per process.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use periscope::Observability;
use tracing::callsite::{Callsite, Identifier};
use tracing::field::FieldSet;
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};

/// A callsite made at run time (an `info!` met for the first time), recording the interest
/// tracing-core caches for it.
struct Site {
    metadata: OnceLock<Metadata<'static>>,
    never: AtomicBool,
    set: AtomicU8,
}

impl Callsite for Site {
    fn set_interest(&self, interest: Interest) {
        self.never.store(interest.is_never(), Ordering::SeqCst);
        self.set.store(1, Ordering::SeqCst);
    }

    fn metadata(&self) -> &Metadata<'_> {
        self.metadata.get().expect("set before registering")
    }
}

fn new_site() -> &'static Site {
    let site: &'static Site = Box::leak(Box::new(Site {
        metadata: OnceLock::new(),
        never: AtomicBool::new(false),
        set: AtomicU8::new(0),
    }));
    let fields = FieldSet::new(&[], Identifier(site));
    let metadata = Metadata::new(
        "event",
        "app",
        Level::INFO,
        None,
        None,
        None,
        fields,
        Kind::EVENT,
    );
    assert!(site.metadata.set(metadata).is_ok());
    tracing::callsite::register(site);
    site
}

#[test]
fn callsites_first_met_while_init_runs_are_not_cached_as_disabled() {
    static SITES: Mutex<Vec<&'static Site>> = Mutex::new(Vec::new());
    static STOP: AtomicBool = AtomicBool::new(false);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                while !STOP.load(Ordering::Relaxed) {
                    let site = new_site();
                    SITES.lock().unwrap().push(site);
                }
            })
        })
        .collect();
    // Enough callsites that `init` takes a while asking them, with new ones coming meanwhile.
    std::thread::sleep(Duration::from_millis(40));
    let obs = Observability::builder()
        .service_name("interest")
        .log_writer(std::io::sink())
        .build()
        .unwrap();
    let _guard = obs.init().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    STOP.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }

    let sites = SITES.lock().unwrap();
    let never = sites
        .iter()
        .filter(|site| site.never.load(Ordering::SeqCst))
        .count();
    assert!(
        sites
            .iter()
            .all(|site| site.set.load(Ordering::SeqCst) == 1)
    );
    assert_eq!(
        never,
        0,
        "{never} of {} info callsites cached as never enabled under the global subscriber",
        sites.len()
    );
}
