//! What benchmarks measure of processes: peak memory and CPU time, of this process, of its
//! threads by name, and of other processes (the pilots) by PID, read from `/proc`.

/// Peak resident memory of this process (the interchange), in bytes.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds of this process so far.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        (u.ru_utime.tv_sec + u.ru_stime.tv_sec) as f64
            + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) as f64 / 1e6
    }
}

/// Clock ticks per second of `/proc` CPU times.
fn hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// User plus system CPU seconds in a `/proc/.../stat` line (fields 14 and 15, counted after
/// the command name, which may hold spaces and parentheses).
fn stat_cpu_seconds(stat: &str) -> f64 {
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize| {
        rest.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(14) + field(15)) as f64 / hz()
}

/// CPU seconds of the processes `pids` so far (0 for those gone).
pub fn processes_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|s| stat_cpu_seconds(&s))
        .sum()
}

/// CPU seconds spent by this process's threads named `name`, in nanoseconds from each thread's
/// `schedstat` (clock ticks from `stat` where that is missing).
pub fn thread_cpu_seconds(name: &str) -> f64 {
    threads_cpu_seconds(|n| n == name)
}

/// CPU seconds spent by this process's threads whose name `named` accepts.
pub fn threads_cpu_seconds(named: impl Fn(&str) -> bool) -> f64 {
    each_thread_cpu_seconds(named).iter().map(|(_, s)| s).sum()
}

/// CPU seconds spent by each of this process's threads whose name `named` accepts, by thread
/// id.
pub fn each_thread_cpu_seconds(named: impl Fn(&str) -> bool) -> Vec<(u64, f64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut each = Vec::new();
    for t in dir.flatten() {
        let Ok(comm) = std::fs::read_to_string(t.path().join("comm")) else {
            continue;
        };
        if !named(comm.trim_end()) {
            continue;
        }
        let tid = t.file_name().to_string_lossy().parse::<u64>().unwrap_or(0);
        if let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            each.push((tid, ns as f64 / 1e9));
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) {
            each.push((tid, stat_cpu_seconds(&stat)));
        }
    }
    each
}

/// CPU seconds spent by the calling thread.
pub fn this_thread_cpu_seconds() -> f64 {
    // SAFETY: clock_gettime fills the struct we pass.
    unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) != 0 {
            return 0.0;
        }
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calling_threads_cpu_grows_with_its_work_and_not_with_others() {
        let before = this_thread_cpu_seconds();
        std::thread::spawn(|| {
            let t0 = this_thread_cpu_seconds();
            let mut x = 0u64;
            while this_thread_cpu_seconds() - t0 < 0.05 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        })
        .join()
        .expect("the spinning thread");
        let idle = this_thread_cpu_seconds() - before;
        assert!(idle < 0.05, "{idle} s while another thread spun");
        // Spinning for 100 ms of wall time gets some CPU even on a busy machine.
        let t0 = this_thread_cpu_seconds();
        let wall = std::time::Instant::now();
        let mut x = 0u64;
        while wall.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let spun = this_thread_cpu_seconds() - t0;
        assert!(spun > 0.005, "{spun} s of CPU in 100 ms of spinning");
    }

    #[test]
    fn cpu_times_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let hz = hz();
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 300 200 0 0 20 0 1 0 5";
        assert!((stat_cpu_seconds(line) - 500.0 / hz).abs() < 1e-9);
        assert_eq!(stat_cpu_seconds("garbage"), 0.0);
        let me = std::process::id();
        assert!(processes_cpu_seconds(&[me]) >= 0.0);
        assert_eq!(processes_cpu_seconds(&[u32::MAX]), 0.0, "no such process");
    }
}
