//! Worker pools: where the manager core's `Start`, `Run` and `Stop` actions happen.
//!
//! [`ProcessPool`] starts real worker processes (`fxr worker`), on the node or inside a
//! container through its runtime's command template; [`SimPool`] keeps in-process workers as
//! timers, with a cold-start cost per container type, so one process can stand in for thousands
//! of nodes. Both report back as [`Event`]s. Neither ever blocks the manager's loop: a process
//! worker's stdin is written by a thread of its own.

use crate::event::Event;
use crate::exec;
use crate::runtime;
use fxr_protocol::{
    Builtin, ContainerSpec, FailureKind, FromWorker, Function, Outcome, Task, TaskId, TaskResult,
    ToWorker, ToWorkerRef, WorkerSettings,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where workers run. Slots and generations come from the manager core; a pool reports a
/// worker's messages and its end tagged with both, and the core ignores stale generations.
pub trait WorkerPool: Send {
    /// How workers start, as the interchange said (container runtime templates).
    fn configure(&mut self, settings: &WorkerSettings);
    /// Starts a worker in `slot`; it reports `Ready` when it can take tasks, or `WorkerGone`.
    fn start(
        &mut self,
        slot: usize,
        generation: u64,
        container: Option<&ContainerSpec>,
        now: Instant,
    );
    /// Hands tasks to the worker in `slot`; it runs them in order and reports each result.
    fn run(&mut self, slot: usize, generation: u64, tasks: &[Task], now: Instant);
    /// Stops the worker in `slot` after its current task.
    fn stop(&mut self, slot: usize, generation: u64);
    /// When [`WorkerPool::poll`] next has something to report.
    fn next_deadline(&self) -> Option<Instant>;
    /// Reports what is due by `now` (simulated workers) into `events`.
    fn poll(&mut self, now: Instant, events: &mut Vec<Event>);
    /// Stops every worker, waiting a moment for them to exit.
    fn shutdown(&mut self);
}

// ---------------------------------------------------------------- processes

/// Most bytes of a worker's stderr kept to explain its end.
const STDERR_TAIL: usize = 2048;

#[derive(Debug)]
struct Proc {
    generation: u64,
    input: Sender<Vec<u8>>,
}

/// Real worker processes.
#[derive(Debug)]
pub struct ProcessPool {
    exe: PathBuf,
    events: Sender<Event>,
    runtimes: Vec<(String, String)>,
    procs: HashMap<usize, Proc>,
    /// Children not yet reaped, by pid, shared with the threads that reap them.
    live: Arc<Mutex<HashSet<u32>>>,
    /// Environment for workers on the node (the object store's).
    env: Vec<(String, String)>,
}

impl ProcessPool {
    /// Workers run `exe worker`, on the node or bind-mounted into a container.
    pub fn new(exe: PathBuf, events: Sender<Event>) -> ProcessPool {
        ProcessPool {
            exe,
            events,
            runtimes: Vec::new(),
            procs: HashMap::new(),
            live: Arc::default(),
            env: Vec::new(),
        }
    }

    /// Workers on the node get these environment variables.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> ProcessPool {
        self.env = env;
        self
    }

    fn command(&self, container: Option<&ContainerSpec>) -> Result<Command, String> {
        Ok(match container {
            None => {
                let mut c = Command::new(&self.exe);
                c.arg("worker");
                c.envs(self.env.iter().map(|(k, v)| (k, v)));
                c
            }
            Some(spec) => {
                let store = self
                    .env
                    .iter()
                    .find(|(k, _)| k == "FXR_STORE")
                    .map(|(_, v)| Path::new(v));
                let line = runtime::command(spec, &self.runtimes, &self.exe, store)?;
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(format!("exec {line}"));
                // The store's variables, for runtimes that pass the environment on; inside,
                // `fxr` is `/fxr/fxr`, so `/fxr` goes first on the PATH.
                c.envs(
                    self.env
                        .iter()
                        // The node's interpreter is not the image's.
                        .filter(|(k, _)| k.starts_with("FXR_") && k != "FXR_PYTHON")
                        .map(|(k, v)| (k, v)),
                );
                if store.is_some() {
                    let path = std::env::var("PATH").unwrap_or_default();
                    c.env("PATH", format!("/fxr:{path}"));
                }
                c
            }
        })
    }

    fn gone(&self, slot: usize, generation: u64, reason: String) {
        let _ = self.events.send(Event::WorkerGone {
            slot,
            generation,
            reason,
        });
    }
}

impl WorkerPool for ProcessPool {
    fn configure(&mut self, settings: &WorkerSettings) {
        self.runtimes = settings.runtimes.clone();
    }

    fn start(
        &mut self,
        slot: usize,
        generation: u64,
        container: Option<&ContainerSpec>,
        _: Instant,
    ) {
        let mut cmd = match self.command(container) {
            Ok(c) => c,
            Err(e) => return self.gone(slot, generation, e),
        };
        let spawned = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let what = container.map_or("fxr worker", |c| c.runtime.as_str());
                return self.gone(slot, generation, format!("cannot start {what}: {e}"));
            }
        };
        let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return self.gone(slot, generation, "worker pipes missing".into());
        };
        let pid = child.id();
        if let Ok(mut live) = self.live.lock() {
            live.insert(pid);
        }
        // stderr: passed on to ours, the tail kept to explain the worker's end.
        let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
        let tail_w = tail.clone();
        let err_thread = std::thread::Builder::new()
            .name(format!("worker-{slot}-err"))
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = std::io::stderr().write_all(&buf[..n]);
                    if let Ok(mut t) = tail_w.lock() {
                        t.extend_from_slice(&buf[..n]);
                        let excess = t.len().saturating_sub(STDERR_TAIL);
                        t.drain(..excess);
                    }
                }
            })
            .ok();
        // stdin: written by its own thread, so a worker that does not read never blocks us.
        let (input, frames) = mpsc::channel::<Vec<u8>>();
        let _ = std::thread::Builder::new()
            .name(format!("worker-{slot}-in"))
            .stack_size(64 * 1024)
            .spawn(move || {
                for f in frames {
                    if stdin.write_all(&f).and_then(|()| stdin.flush()).is_err() {
                        return;
                    }
                }
            });
        // stdout: frames become events; at its end the child is reaped and the end reported.
        let events = self.events.clone();
        let live = self.live.clone();
        let reader = std::thread::Builder::new()
            .name(format!("worker-{slot}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut r = BufReader::with_capacity(1 << 16, stdout);
                let mut buf = Vec::new();
                let mut error = None;
                loop {
                    match fxr_protocol::read_frame::<FromWorker>(&mut r, &mut buf) {
                        Ok(Some(msg)) => {
                            let ev = Event::Worker {
                                slot,
                                generation,
                                msg,
                            };
                            if events.send(ev).is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            error = Some(format!("bad output from the worker: {e}"));
                            let _ = child.kill();
                            break;
                        }
                    }
                }
                let status = child.wait();
                if let Ok(mut l) = live.lock() {
                    l.remove(&pid);
                }
                if let Some(t) = err_thread {
                    let _ = t.join();
                }
                let tail = tail.lock().map(|t| t.clone()).unwrap_or_default();
                let mut reason = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("cannot wait for it: {e}"),
                };
                if let Some(e) = error {
                    reason = format!("{reason}; {e}");
                }
                let tail = String::from_utf8_lossy(&tail);
                let tail = tail.trim();
                if !tail.is_empty() {
                    reason = format!("{tail} ({reason})");
                }
                let _ = events.send(Event::WorkerGone {
                    slot,
                    generation,
                    reason,
                });
            });
        if reader.is_err() {
            self.gone(
                slot,
                generation,
                "cannot start a thread for the worker".into(),
            );
            return;
        }
        self.procs.insert(slot, Proc { generation, input });
    }

    fn run(&mut self, slot: usize, generation: u64, tasks: &[Task], _: Instant) {
        let Some(p) = self.procs.get(&slot).filter(|p| p.generation == generation) else {
            return;
        };
        let mut frame = Vec::new();
        match fxr_protocol::encode_into(&mut frame, &ToWorkerRef::Run { tasks }) {
            // A send error means the worker is gone; its reader reports that.
            Ok(()) => {
                let _ = p.input.send(frame);
            }
            Err(e) => tracing::error!(slot, error = %e, "cannot encode tasks for a worker"),
        }
    }

    fn stop(&mut self, slot: usize, generation: u64) {
        if self
            .procs
            .get(&slot)
            .is_some_and(|p| p.generation == generation)
        {
            if let Some(p) = self.procs.remove(&slot) {
                let mut frame = Vec::new();
                if fxr_protocol::encode_into(&mut frame, &ToWorker::Stop).is_ok() {
                    let _ = p.input.send(frame);
                }
                // Dropping the sender closes the worker's stdin after the Stop frame.
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn poll(&mut self, _: Instant, _: &mut Vec<Event>) {}

    fn shutdown(&mut self) {
        let slots: Vec<(usize, u64)> = self.procs.iter().map(|(s, p)| (*s, p.generation)).collect();
        for (s, g) in slots {
            self.stop(s, g);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && self.live.lock().is_ok_and(|l| !l.is_empty()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Ok(live) = self.live.lock() {
            for pid in live.iter() {
                // SAFETY: kill(2) on a child of ours that has not been reaped yet.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

// ---------------------------------------------------------------- simulation

/// A cold-start cost: fixed, or drawn from measured samples.
#[derive(Clone, Debug, PartialEq)]
pub enum Cost {
    Fixed(Duration),
    Samples(Arc<Vec<Duration>>),
}

impl Cost {
    fn draw(&self, rng: &mut fastrand::Rng) -> Duration {
        match self {
            Cost::Fixed(d) => *d,
            Cost::Samples(s) if s.is_empty() => Duration::ZERO,
            Cost::Samples(s) => s[rng.usize(0..s.len())],
        }
    }

    /// `SECONDS`, or `@FILE` with one sample in seconds per line (blank lines and `#` comments
    /// skipped).
    pub fn parse(s: &str) -> Result<Cost, String> {
        let secs = |v: &str| -> Result<Duration, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0 && *x <= 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("`{v}` is not a number of seconds between 0 and 3600"))
        };
        match s.strip_prefix('@') {
            None => secs(s).map(Cost::Fixed),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read cold-start samples {path}: {e}"))?;
                let samples = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .enumerate()
                    .map(|(i, l)| secs(l).map_err(|e| format!("{path}: sample {}: {e}", i + 1)))
                    .collect::<Result<Vec<_>, _>>()?;
                if samples.is_empty() {
                    return Err(format!("{path} holds no cold-start samples"));
                }
                Ok(Cost::Samples(Arc::new(samples)))
            }
        }
    }
}

/// Cold-start costs of simulated container workers: per runtime, else a default. Workers on the
/// bare node start at once.
#[derive(Clone, Debug, PartialEq)]
pub struct ColdStart {
    pub default: Cost,
    pub per_runtime: Vec<(String, Cost)>,
}

impl Default for ColdStart {
    fn default() -> Self {
        ColdStart {
            default: Cost::Fixed(Duration::ZERO),
            per_runtime: Vec::new(),
        }
    }
}

impl ColdStart {
    fn cost(&self, spec: &ContainerSpec) -> &Cost {
        self.per_runtime
            .iter()
            .find(|(r, _)| *r == spec.runtime)
            .map_or(&self.default, |(_, c)| c)
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Ready,
    /// The running task is done, after `run_us`.
    Done(u64),
}

/// What a simulated worker keeps of a task: its id and what running it means. The manager
/// core keeps the task itself.
#[derive(Debug)]
enum Job {
    /// `sleep` and `spin`: a timer of this many milliseconds.
    Timer(u64),
    /// Another built-in, run when the worker reaches it.
    Call(Builtin, Vec<u8>),
    /// Known to fail when it runs (bad arguments, or not a built-in).
    Fail(FailureKind, String),
}

#[derive(Debug, Default)]
struct SimWorker {
    generation: u64,
    ready: bool,
    queue: VecDeque<(TaskId, Job)>,
    running: Option<TaskId>,
}

/// What running `task` means for a simulated worker. `last_millis` holds the last `sleep`/`spin`
/// arguments read and their milliseconds: tasks of one run carry the same arguments, so
/// comparing bytes replaces parsing JSON per task.
fn job(last_millis: &mut Option<(Vec<u8>, u64)>, task: &Task) -> Job {
    match &task.function {
        Function::Builtin(Builtin::Sleep | Builtin::Spin) => {
            let millis = match last_millis {
                Some((args, ms)) if *args == task.args => Ok(*ms),
                _ => exec::millis_arg(&task.args).inspect(|ms| {
                    *last_millis = Some((task.args.clone(), *ms));
                }),
            };
            match millis {
                Ok(ms) => Job::Timer(ms),
                Err(e) => Job::Fail(FailureKind::FunctionError, e),
            }
        }
        Function::Builtin(b) => Job::Call(*b, task.args.clone()),
        Function::Shell(_) | Function::Mpi(_) | Function::Python(_) => Job::Fail(
            FailureKind::Rejected,
            "simulated workers run builtin functions only".into(),
        ),
    }
}

/// In-process workers: built-ins only; `sleep` and `spin` become timers.
#[derive(Debug)]
pub struct SimPool {
    cold: ColdStart,
    rng: fastrand::Rng,
    /// By slot (slots are small numbers from the manager core).
    workers: Vec<Option<SimWorker>>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64, Due)>>,
    /// Results reported at the next poll.
    done: Vec<Event>,
    /// The last `sleep`/`spin` arguments read and their milliseconds (see [`job`]).
    last_millis: Option<(Vec<u8>, u64)>,
}

impl SimPool {
    pub fn new(cold: ColdStart, seed: u64) -> SimPool {
        SimPool {
            cold,
            rng: fastrand::Rng::with_seed(seed),
            workers: Vec::new(),
            timers: BinaryHeap::new(),
            done: Vec::new(),
            last_millis: None,
        }
    }

    fn worker(&mut self, slot: usize, generation: u64) -> Option<&mut SimWorker> {
        self.workers
            .get_mut(slot)?
            .as_mut()
            .filter(|w| w.generation == generation)
    }

    /// Starts the next task of `slot`, finishing those that take no time at once (their
    /// results go out together, as a real worker's batch would).
    fn next(&mut self, slot: usize, now: Instant) {
        let Some(Some(w)) = self.workers.get_mut(slot) else {
            return;
        };
        let mut results = Vec::new();
        while w.running.is_none() && w.ready {
            let Some((id, job)) = w.queue.pop_front() else {
                break;
            };
            let outcome = match job {
                Job::Timer(ms) => {
                    self.timers.push(Reverse((
                        now + Duration::from_millis(ms),
                        slot,
                        w.generation,
                        Due::Done(ms * 1000),
                    )));
                    w.running = Some(id);
                    break;
                }
                Job::Call(b, args) => exec::run_builtin(b, &args),
                Job::Fail(kind, message) => Outcome::Failure { kind, message },
            };
            results.push(TaskResult {
                id,
                outcome,
                run_us: 0,
            });
        }
        if !results.is_empty() {
            self.done.push(Event::Worker {
                slot,
                generation: w.generation,
                msg: FromWorker::Results { results },
            });
        }
    }
}

impl WorkerPool for SimPool {
    fn configure(&mut self, _: &WorkerSettings) {}

    fn start(
        &mut self,
        slot: usize,
        generation: u64,
        container: Option<&ContainerSpec>,
        now: Instant,
    ) {
        let cost = container.map_or(Duration::ZERO, |c| self.cold.cost(c).draw(&mut self.rng));
        if self.workers.len() <= slot {
            self.workers.resize_with(slot + 1, || None);
        }
        self.workers[slot] = Some(SimWorker {
            generation,
            ..SimWorker::default()
        });
        self.timers
            .push(Reverse((now + cost, slot, generation, Due::Ready)));
    }

    fn run(&mut self, slot: usize, generation: u64, tasks: &[Task], now: Instant) {
        let Some(Some(w)) = self.workers.get_mut(slot) else {
            return;
        };
        if w.generation != generation {
            return;
        }
        let last_millis = &mut self.last_millis;
        w.queue
            .extend(tasks.iter().map(|t| (t.id, job(last_millis, t))));
        self.next(slot, now);
    }

    fn stop(&mut self, slot: usize, generation: u64) {
        if self.worker(slot, generation).is_some() {
            self.workers[slot] = None;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if !self.done.is_empty() {
            return Some(Instant::now());
        }
        self.timers.peek().map(|Reverse((t, ..))| *t)
    }

    fn poll(&mut self, now: Instant, events: &mut Vec<Event>) {
        events.append(&mut self.done);
        while let Some(Reverse((t, ..))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, slot, generation, due))) = self.timers.pop() else {
                break;
            };
            let Some(w) = self.worker(slot, generation) else {
                continue;
            };
            match due {
                Due::Ready => {
                    w.ready = true;
                    events.push(Event::Worker {
                        slot,
                        generation,
                        msg: FromWorker::Ready { pid: 0 },
                    });
                }
                Due::Done(run_us) => {
                    if let Some(id) = w.running.take() {
                        events.push(Event::Worker {
                            slot,
                            generation,
                            msg: FromWorker::Results {
                                results: vec![TaskResult {
                                    id,
                                    outcome: Outcome::Success(b"null".to_vec()),
                                    run_us,
                                }],
                            },
                        });
                    }
                }
            }
            self.next(slot, now);
            events.append(&mut self.done);
        }
    }

    fn shutdown(&mut self) {
        self.workers.clear();
        self.timers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep_task(id: u64, ms: u64) -> Task {
        Task {
            id: fxr_protocol::TaskId(id),
            function: Function::Builtin(Builtin::Sleep),
            args: format!("{{\"ms\":{ms}}}").into_bytes(),
            attempt: 0,
            container: None,
        }
    }

    #[test]
    fn a_simulated_container_worker_is_ready_after_its_cold_start_and_runs_tasks_in_order() {
        let cold = ColdStart {
            default: Cost::Fixed(Duration::from_secs(5)),
            per_runtime: vec![("bwrap".into(), Cost::Fixed(Duration::from_secs(2)))],
        };
        let mut pool = SimPool::new(cold, 1);
        let t0 = Instant::now();
        let spec = ContainerSpec {
            runtime: "bwrap".into(),
            image: "i".into(),
            options: vec![],
        };
        pool.start(0, 1, Some(&spec), t0);
        let mut ev = Vec::new();
        pool.poll(t0 + Duration::from_millis(1999), &mut ev);
        assert!(ev.is_empty());
        assert_eq!(pool.next_deadline(), Some(t0 + Duration::from_secs(2)));
        pool.poll(t0 + Duration::from_secs(2), &mut ev);
        assert!(matches!(
            ev[..],
            [Event::Worker {
                msg: FromWorker::Ready { .. },
                ..
            }]
        ));
        let t1 = t0 + Duration::from_secs(2);
        pool.run(0, 1, &[sleep_task(1, 10), sleep_task(2, 10)], t1);
        ev.clear();
        pool.poll(t1 + Duration::from_millis(10), &mut ev);
        assert_eq!(ev.len(), 1, "one task at a time");
        pool.poll(t1 + Duration::from_millis(20), &mut ev);
        assert_eq!(ev.len(), 2);
        // A stopped worker's timers are dropped.
        pool.run(0, 1, &[sleep_task(3, 10)], t1 + Duration::from_millis(20));
        pool.stop(0, 1);
        ev.clear();
        pool.poll(t1 + Duration::from_secs(1), &mut ev);
        assert!(ev.is_empty());
    }

    #[test]
    fn cold_start_costs_parse_from_numbers_and_sample_files() {
        assert_eq!(
            Cost::parse("1.5").unwrap(),
            Cost::Fixed(Duration::from_millis(1500))
        );
        assert!(Cost::parse("-1").unwrap_err().contains("`-1`"));
        let dir = std::env::temp_dir().join(format!("fxr-cold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.txt");
        std::fs::write(&f, "# seconds\n1.0\n\n2.0\n").unwrap();
        match Cost::parse(&format!("@{}", f.display())).unwrap() {
            Cost::Samples(s) => {
                assert_eq!(*s, vec![Duration::from_secs(1), Duration::from_secs(2)])
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&f, "1.0\nfast\n").unwrap();
        let e = Cost::parse(&format!("@{}", f.display())).unwrap_err();
        assert!(e.contains("sample 2") && e.contains("`fast`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
