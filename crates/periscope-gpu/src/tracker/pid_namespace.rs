//! Whether the tracker runs in the host's (initial) pid namespace, where the pids NVML
//! reports (host pids) are the pids the tracker sees for the tree.

/// What `/proc/self/ns/pid` reads in the initial pid namespace. Its inode is the kernel's
/// fixed `PROC_PID_INIT_INO` (0xEFFFFFFC, `include/linux/proc_ns.h`, fixed since Linux 3.8);
/// every other pid namespace gets an inode allocated when it is created.
const INIT_PID_NS_LINK: &str = "pid:[4026531836]";

/// `true` only when this process is known to be in the host's pid namespace; `false` in
/// another one and when it cannot be told (not Linux, no `/proc`, the link unreadable):
/// both keep the tracker's busy-GPU guess.
pub(crate) fn detect() -> bool {
    std::fs::read_link("/proc/self/ns/pid").is_ok_and(|link| is_init(link.as_os_str()))
}

fn is_init(link: &std::ffi::OsStr) -> bool {
    link == INIT_PID_NS_LINK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_initial_namespace_link_is_the_host() {
        assert!(is_init("pid:[4026531836]".as_ref()));
        // A container's namespace, a near miss and garbage are not.
        assert!(!is_init("pid:[4026532291]".as_ref()));
        assert!(!is_init("pid:[4026531836] ".as_ref()));
        assert!(!is_init("net:[4026531836]".as_ref()));
        assert!(!is_init("".as_ref()));
    }
}
