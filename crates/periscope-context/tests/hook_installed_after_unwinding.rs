//! The panic hook's first installation asked for while a panic unwinds (from a `Drop`, before
//! any error layer or job installed it): installed by the next call, not lost for the process.
//! A binary of its own: the hook is installed once per process.

use periscope_context::panic::{catch, install_hook};

struct InstallsWhenDropped;

impl Drop for InstallsWhenDropped {
    fn drop(&mut self) {
        install_hook();
    }
}

#[test]
fn a_first_install_during_unwinding_leaves_the_next_one_to_install_the_hook() {
    let unwound = std::panic::catch_unwind(|| {
        let _guard = InstallsWhenDropped;
        panic!("first");
    });
    assert!(unwound.is_err());

    // As the next error layer built, or job run, asks for it.
    install_hook();
    let caught = catch(|| -> () { panic!("second") }).unwrap_err();
    assert_eq!(caught.message, "second");
    let location = caught
        .location
        .clone()
        .expect("the hook records where a caught panic was raised");
    assert!(
        location.starts_with("crates/periscope-context/tests/hook_installed_after_unwinding.rs:"),
        "{location}"
    );
}
