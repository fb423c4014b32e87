//! What each process of the tree has used so far, and the tree's use over an interval from
//! those totals.
//!
//! A reaped child's CPU time and storage I/O move into its parent's own totals (the kernel adds
//! them at reaping: `cutime`/`cstime` in `/proc/<pid>/stat`, `/proc/<pid>/io`). So the sum of
//! the totals of the tree's live processes only grows as the tree works, whoever of them ends
//! between two readings; summing each process's own per-interval use instead counts a reaped
//! child's I/O again in its parent, and loses the CPU of a child that ends between readings
//! (all of it for one too short-lived to be seen).

use std::collections::HashMap;
use std::ops::{Add, Sub};

use sysinfo::{Pid, Process, System};

/// What a process (or the tree) has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Totals {
    pub(crate) cpu_seconds: f64,
    pub(crate) read_bytes: u64,
    pub(crate) written_bytes: u64,
}

impl Add for Totals {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            read_bytes: self.read_bytes.saturating_add(other.read_bytes),
            written_bytes: self.written_bytes.saturating_add(other.written_bytes),
        }
    }
}

impl Sub for Totals {
    type Output = Self;

    /// Never below zero: a total that fell (a process that left the tree alive, its totals
    /// with it) is no use of this interval.
    fn sub(self, earlier: Self) -> Self {
        Self {
            cpu_seconds: (self.cpu_seconds - earlier.cpu_seconds).max(0.0),
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            written_bytes: self.written_bytes.saturating_sub(earlier.written_bytes),
        }
    }
}

/// The totals of each process of the tree at one reading, with its parent then.
pub(crate) type TreeTotals = HashMap<Pid, (Totals, Option<Pid>)>;

/// The totals of `process`: its CPU time and, with `reaped_children` (a tree that counts its
/// descendants) on Linux, that of the children it reaped; its storage I/O (which on Linux holds
/// its reaped children's whatever is asked).
pub(crate) fn totals(process: &Process, reaped_children: bool) -> Totals {
    let disk = process.disk_usage();
    Totals {
        cpu_seconds: cpu_seconds(process, reaped_children),
        read_bytes: disk.total_read_bytes,
        written_bytes: disk.total_written_bytes,
    }
}

/// What the tree used between `earlier` and `now`: the totals of the processes in it now, less
/// the earlier totals of those still in it, and of those gone whose nearest known ancestor is
/// still in it (it reaped them, their totals now in its own). The earlier totals of a process
/// that left otherwise (reparented away, alive or reaped by init after its parent died) are not
/// taken off: they left with it, and must not take others' use of the interval with them.
pub(crate) fn used_between(earlier: &TreeTotals, now: &TreeTotals, system: &System) -> Totals {
    let current = now.values().fold(Totals::default(), |sum, (t, _)| sum + *t);
    let reaped_in_tree = |pid: &Pid| {
        // Up the parents known at the earlier reading, to one still in the tree; bounded by
        // the tree's size, so a cycle in stale parent links cannot loop.
        let mut at = *pid;
        for _ in 0..=earlier.len() {
            match earlier.get(&at).and_then(|(_, parent)| *parent) {
                Some(parent) if now.contains_key(&parent) => return true,
                Some(parent) if system.process(parent).is_none() => at = parent,
                _ => return false,
            }
        }
        false
    };
    let base = earlier
        .iter()
        .filter(|(pid, _)| {
            now.contains_key(pid) || (system.process(**pid).is_none() && reaped_in_tree(pid))
        })
        .fold(Totals::default(), |sum, (_, (t, _))| sum + *t);
    current - base
}

/// The memory of `process`: its proportional set size on Linux (each shared page divided
/// among the processes that map it, so a parent and its forked workers sharing a model's
/// pages count them once, as the cgroup that limits them does), else its resident set size.
pub(crate) fn memory_bytes(process: &Process) -> u64 {
    #[cfg(target_os = "linux")]
    if let Some(pss) = linux::proportional_set_size(process.pid()) {
        return pss;
    }
    process.memory()
}

fn cpu_seconds(process: &Process, reaped_children: bool) -> f64 {
    #[cfg(target_os = "linux")]
    if reaped_children && let Some(seconds) = linux::cpu_seconds_with_reaped_children(process.pid())
    {
        return seconds;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reaped_children;
    process.accumulated_cpu_time() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(seconds: f64) -> Totals {
        Totals {
            cpu_seconds: seconds,
            ..Totals::default()
        }
    }

    /// A shell `s` under the root `p` ran `c` and ended with it in one interval: `p` reaped `s`,
    /// whose totals held `c`'s; both were counted before, and are taken off once.
    #[test]
    fn children_reaped_inside_the_tree_are_counted_once() {
        let (p, s, c) = (Pid::from_u32(1), Pid::from_u32(2), Pid::from_u32(3));
        let earlier = TreeTotals::from([
            (p, (cpu(10.0), None)),
            (s, (cpu(1.0), Some(p))),
            (c, (cpu(4.0), Some(s))),
        ]);
        // `p` used 0.5 more itself; `s` ended at 1.5, `c` at 6.0: `p` holds 17.5 now.
        let now = TreeTotals::from([(p, (cpu(10.5 + 1.5 + 6.0), None))]);
        let used = used_between(&earlier, &now, &System::new());
        assert!((used.cpu_seconds - 3.0).abs() < 1e-9, "{used:?}");
    }

    /// A process that left the tree alive (reparented away, its parent still running outside
    /// it) takes its totals with it: the others' use of the interval stays.
    #[test]
    fn a_process_whose_parent_left_the_tree_takes_nothing_with_it() {
        let this = Pid::from_u32(std::process::id());
        let mut system = System::new();
        system.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[this]), true);
        let (p, w) = (Pid::from_u32(u32::MAX - 1), Pid::from_u32(u32::MAX - 2));
        // `w`'s parent is a process outside the tree that still runs (this one stands in).
        let earlier = TreeTotals::from([(p, (cpu(10.0), None)), (w, (cpu(50.0), Some(this)))]);
        let now = TreeTotals::from([(p, (cpu(12.0), None))]);
        let used = used_between(&earlier, &now, &system);
        assert!((used.cpu_seconds - 2.0).abs() < 1e-9, "{used:?}");
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use sysinfo::Pid;

    /// The unit of the times in `/proc/<pid>/stat`: `USER_HZ`, 100 on every architecture Linux
    /// runs services on (what `sysconf(_SC_CLK_TCK)` answers).
    const TICKS_PER_SECOND: f64 = 100.0;

    /// `utime + stime + cutime + cstime` of `/proc/<pid>/stat`, in seconds.
    pub(super) fn cpu_seconds_with_reaped_children(pid: Pid) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / TICKS_PER_SECOND)
    }

    /// The four CPU times of a `stat` line, summed. The command name (field 2, in parentheses)
    /// may hold spaces and parentheses itself: the fields are counted after its last `)`.
    pub(super) fn stat_cpu_ticks(stat: &str) -> Option<u64> {
        let (_, after_name) = stat.rsplit_once(')')?;
        // Field 3 (the state) is the first after the name; utime is field 14.
        let mut fields = after_name.split_ascii_whitespace().skip(11);
        let mut ticks = 0u64;
        for _ in 0..4 {
            // `cutime` and `cstime` are signed in the kernel's format: never negative in fact.
            let value: i64 = fields.next()?.parse().ok()?;
            ticks = ticks.saturating_add(u64::try_from(value).unwrap_or(0));
        }
        Some(ticks)
    }

    /// `Pss:` of `/proc/<pid>/smaps_rollup` (Linux 4.14 and later), in bytes.
    pub(super) fn proportional_set_size(pid: Pid) -> Option<u64> {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        rollup_pss(&rollup)
    }

    pub(super) fn rollup_pss(rollup: &str) -> Option<u64> {
        let line = rollup.lines().find(|line| line.starts_with("Pss:"))?;
        let kib: u64 = line["Pss:".len()..]
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn cpu_times_are_read_after_a_command_name_with_spaces_and_parentheses() {
            let stat = "4242 (my (odd) job) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                        150 50 300 25 20 0 1 0 100 1000000 100 18446744073709551615";
            assert_eq!(stat_cpu_ticks(stat), Some(150 + 50 + 300 + 25));
            assert_eq!(stat_cpu_ticks("4242 (cut short) S 1 2"), None);
            assert_eq!(stat_cpu_ticks("no name at all"), None);
        }

        #[test]
        fn the_proportional_set_size_is_read_in_bytes() {
            let rollup = "55a0c0a00000-7ffd4b1f9000 ---p 00000000 00:00 0 [rollup]\n\
                          Rss:              262144 kB\n\
                          Pss:               65536 kB\n\
                          Pss_Anon:          65000 kB\n";
            assert_eq!(rollup_pss(rollup), Some(65536 * 1024));
            assert_eq!(rollup_pss("Rss: 1 kB\n"), None);
            assert_eq!(rollup_pss("Pss: lots kB\n"), None);
        }
    }
}
