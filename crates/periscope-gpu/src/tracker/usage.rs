//! What each process of the tree has used so far, and the tree's use over an interval from
//! those totals.
//!
//! A reaped child's CPU time and storage I/O move into its parent's own totals (the kernel adds
//! them at reaping: `cutime`/`cstime` in `/proc/<pid>/stat`, `/proc/<pid>/io`). So the sum of
//! the totals of the tree's live processes only grows as the tree works, whoever of them ends
//! between two readings; summing each process's own per-interval use instead counts a reaped
//! child's I/O again in its parent, and loses the CPU of a child that ends between readings
//! (all of it for one too short-lived to be seen).
//!
//! A parent that ignores `SIGCHLD` (or sets `SA_NOCLDWAIT`) has its children reaped without
//! that accounting: their earlier totals are then taken off the growth of that parent's
//! reaped-children time alone (never below zero), so the rest of the tree's use of the
//! interval stays, and only the child's last interval is lost.

use std::collections::HashMap;
use std::ops::{Add, Sub};

use sysinfo::{Pid, Process, System};

/// What a process (or the tree) has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Totals {
    /// The process's own CPU time (for the tree's use over an interval, all of it).
    pub(crate) cpu_seconds: f64,
    /// The CPU time of the children the process reaped (Linux's `cutime + cstime`).
    pub(crate) reaped_cpu_seconds: f64,
    /// Storage I/O, the reaped children's included (Linux keeps no separate figure).
    pub(crate) read_bytes: u64,
    pub(crate) written_bytes: u64,
}

impl Totals {
    fn all_cpu_seconds(self) -> f64 {
        self.cpu_seconds + self.reaped_cpu_seconds
    }
}

impl Add for Totals {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            reaped_cpu_seconds: self.reaped_cpu_seconds + other.reaped_cpu_seconds,
            read_bytes: self.read_bytes.saturating_add(other.read_bytes),
            written_bytes: self.written_bytes.saturating_add(other.written_bytes),
        }
    }
}

impl Sub for Totals {
    type Output = Self;

    /// Never below zero, field by field: a total that fell is no use of this interval.
    fn sub(self, earlier: Self) -> Self {
        Self {
            cpu_seconds: (self.cpu_seconds - earlier.cpu_seconds).max(0.0),
            reaped_cpu_seconds: (self.reaped_cpu_seconds - earlier.reaped_cpu_seconds).max(0.0),
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
    let (cpu_seconds, reaped_cpu_seconds) = cpu_seconds(process, reaped_children);
    Totals {
        cpu_seconds,
        reaped_cpu_seconds,
        read_bytes: disk.total_read_bytes,
        written_bytes: disk.total_written_bytes,
    }
}

/// What the tree used between `earlier` and `now`: each process in it now, its growth since
/// then (all of its totals when it is new), less, for the one that reaped them, the earlier
/// totals of the processes gone since whose nearest known ancestor it is (their totals are now
/// in its own). The earlier totals of a process that left otherwise (reparented away, alive or
/// reaped by init after its parent died) are not taken off: they left with it, and must not
/// take others' use of the interval with them.
pub(crate) fn used_between(earlier: &TreeTotals, now: &TreeTotals, system: &System) -> Totals {
    let mut counted_in_reaped: HashMap<Pid, Totals> = HashMap::new();
    for (pid, (totals, _)) in earlier {
        if !now.contains_key(pid)
            && system.process(*pid).is_none()
            && let Some(reaper) = reaper_in_tree(*pid, earlier, now, system)
        {
            let counted = counted_in_reaped.entry(reaper).or_default();
            *counted = *counted + *totals;
        }
    }
    now.iter()
        .map(|(pid, (totals, _))| {
            let before = earlier.get(pid).map(|(t, _)| *t).unwrap_or_default();
            let counted = counted_in_reaped.get(pid).copied().unwrap_or_default();
            let grown = *totals - before;
            Totals {
                // Gone children's earlier CPU is taken off this process's reaped-children
                // time only: a child reaped without accounting (its parent ignores
                // `SIGCHLD`) added none there, and must not take this process's own time.
                cpu_seconds: grown.cpu_seconds
                    + (grown.reaped_cpu_seconds - counted.all_cpu_seconds()).max(0.0),
                reaped_cpu_seconds: 0.0,
                read_bytes: grown.read_bytes.saturating_sub(counted.read_bytes),
                written_bytes: grown.written_bytes.saturating_sub(counted.written_bytes),
            }
        })
        .fold(Totals::default(), |sum, used| sum + used)
}

/// The process in the tree now that reaped `gone`: up the parents known at the earlier
/// reading, past those gone too, to one still in the tree. Bounded by the tree's size, so a
/// cycle in stale parent links cannot loop.
fn reaper_in_tree(
    gone: Pid,
    earlier: &TreeTotals,
    now: &TreeTotals,
    system: &System,
) -> Option<Pid> {
    let mut at = gone;
    for _ in 0..=earlier.len() {
        match earlier.get(&at).and_then(|(_, parent)| *parent) {
            Some(parent) if now.contains_key(&parent) => return Some(parent),
            Some(parent) if system.process(parent).is_none() => at = parent,
            _ => return None,
        }
    }
    None
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

/// The own CPU time of `process`, and, with `reaped_children` on Linux, that of the children it
/// reaped (0 otherwise).
fn cpu_seconds(process: &Process, reaped_children: bool) -> (f64, f64) {
    #[cfg(target_os = "linux")]
    if reaped_children && let Some(seconds) = linux::cpu_seconds(process.pid()) {
        return seconds;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reaped_children;
    (process.accumulated_cpu_time() as f64 / 1000.0, 0.0)
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

    /// Own CPU time and reaped children's.
    fn cpus(own: f64, reaped: f64) -> Totals {
        Totals {
            cpu_seconds: own,
            reaped_cpu_seconds: reaped,
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
        // `p` used 0.5 more itself; `s` ended at 1.5, `c` at 6.0: `p` reaped 7.5 now.
        let now = TreeTotals::from([(p, (cpus(10.5, 1.5 + 6.0), None))]);
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

    /// A parent that ignores `SIGCHLD` has its child reaped without accounting: its reaped
    /// time does not grow, and the child's earlier total takes neither its parent's own use of
    /// the interval nor a sibling's; only the child's last interval is lost.
    #[test]
    fn a_child_reaped_without_accounting_takes_no_one_elses_use() {
        let (p, c, q) = (Pid::from_u32(1), Pid::from_u32(2), Pid::from_u32(3));
        let earlier = TreeTotals::from([
            (p, (cpu(10.0), None)),
            (c, (cpu(50.0), Some(p))),
            (q, (cpu(5.0), Some(p))),
        ]);
        let now = TreeTotals::from([(p, (cpu(10.5), None)), (q, (cpu(6.0), Some(p)))]);
        let used = used_between(&earlier, &now, &System::new());
        assert!((used.cpu_seconds - 1.5).abs() < 1e-9, "{used:?}");
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use sysinfo::Pid;

    /// The unit of the times in `/proc/<pid>/stat`: `USER_HZ`, 100 on every architecture Linux
    /// runs services on (what `sysconf(_SC_CLK_TCK)` answers).
    const TICKS_PER_SECOND: f64 = 100.0;

    /// `utime + stime` and `cutime + cstime` of `/proc/<pid>/stat`, in seconds.
    pub(super) fn cpu_seconds(pid: Pid) -> Option<(f64, f64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (own, reaped) = stat_cpu_ticks(&stat)?;
        Some((
            own as f64 / TICKS_PER_SECOND,
            reaped as f64 / TICKS_PER_SECOND,
        ))
    }

    /// The process's own CPU ticks and its reaped children's, from a `stat` line. The command
    /// name (field 2, in parentheses) may hold spaces and parentheses itself: the fields are
    /// counted after its last `)`.
    pub(super) fn stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
        let (_, after_name) = stat.rsplit_once(')')?;
        // Field 3 (the state) is the first after the name; utime is field 14.
        let mut fields = after_name.split_ascii_whitespace().skip(11);
        let mut ticks = [0u64; 4];
        for tick in &mut ticks {
            // `cutime` and `cstime` are signed in the kernel's format: never negative in fact.
            let value: i64 = fields.next()?.parse().ok()?;
            *tick = u64::try_from(value).unwrap_or(0);
        }
        let [utime, stime, cutime, cstime] = ticks;
        Some((utime.saturating_add(stime), cutime.saturating_add(cstime)))
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
            assert_eq!(stat_cpu_ticks(stat), Some((150 + 50, 300 + 25)));
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
