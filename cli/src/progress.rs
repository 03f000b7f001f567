//! `--progress`: tasks done, failures, rate and time left, on stderr. On a terminal one line
//! redrawn in place; otherwise (a log file, a pipe) a plain line every few seconds and at the
//! end, never a carriage return.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the line is redrawn on a terminal, and printed anew elsewhere.
const TTY_EVERY: Duration = Duration::from_millis(200);
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    show: bool,
    tty: bool,
    start: Instant,
    last: Option<Instant>,
    done: usize,
    failed: usize,
    total: usize,
}

/// `1,234`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The progress line: `1,200/10,000 tasks, 2 failed, 3,400 tasks/s, ETA 3s`.
pub fn line(done: usize, failed: usize, total: usize, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let mut l = format!(
        "{}/{} tasks, {} failed, {} tasks/s",
        thousands(done),
        thousands(total),
        thousands(failed),
        thousands(rate.round() as usize)
    );
    if done < total {
        if rate > 0.0 {
            l.push_str(&format!(
                ", ETA {}",
                crate::epstatus::age(((total - done) as f64 / rate).round() as u64)
            ));
        }
    } else {
        l.push_str(&format!(", {:.3} s", secs));
    }
    l
}

impl Progress {
    pub fn new(show: bool, total: usize) -> Progress {
        Progress {
            show,
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
            last: None,
            done: 0,
            failed: 0,
            total,
        }
    }

    /// Counts tasks just finished, `failed` of them failures, and shows the line when due.
    pub fn add(&mut self, finished: usize, failed: usize) {
        self.done += finished;
        self.failed += failed;
        self.show_when_due();
    }

    /// Sets the counts of tasks finished and failed so far.
    pub fn set(&mut self, done: usize, failed: usize) {
        self.done = done;
        self.failed = failed;
        self.show_when_due();
    }

    fn show_when_due(&mut self) {
        if !self.show {
            return;
        }
        let finished = self.done >= self.total;
        let every = if self.tty { TTY_EVERY } else { PLAIN_EVERY };
        let due = self.last.is_none_or(|t| t.elapsed() >= every);
        if !(due || finished) {
            return;
        }
        self.last = Some(Instant::now());
        let text = line(self.done, self.failed, self.total, self.start.elapsed());
        if self.tty {
            let width = 30;
            let filled = self.done.min(self.total) * width / self.total.max(1);
            eprint!(
                "\r\x1b[2K[{}{}] {text}",
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
            if finished {
                eprintln!();
            }
        } else {
            eprintln!("{text}");
        }
        if finished {
            self.show = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_rate_eta_and_failures() {
        assert_eq!(
            line(1200, 2, 10_000, Duration::from_millis(400)),
            "1,200/10,000 tasks, 2 failed, 3,000 tasks/s, ETA 3s"
        );
        assert_eq!(
            line(10_000, 0, 10_000, Duration::from_millis(2500)),
            "10,000/10,000 tasks, 0 failed, 4,000 tasks/s, 2.500 s"
        );
        assert_eq!(
            line(0, 0, 5, Duration::ZERO),
            "0/5 tasks, 0 failed, 0 tasks/s"
        );
        assert_eq!(crate::epstatus::age(185), "3m05s");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
