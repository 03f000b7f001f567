//! The worker process: reads task batches from the manager on stdin, runs them one at a time,
//! and writes results to stdout.
//!
//! Results of short tasks are held back until the batch ends, so a batch of a thousand no-ops
//! costs one write; a result that took over a millisecond is written at once, so the manager
//! learns promptly that the worker is free.

use crate::exec;
use crate::python::PythonHost;
use fxr_protocol::{read_frame, FailureKind, FromWorker, Function, TaskResult, ToWorker, MAX_BODY};
use std::io::{BufReader, BufWriter, Write};
use std::time::Duration;

const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// Runs the worker loop on this process's stdin and stdout until stdin closes or `Stop` arrives.
pub fn worker_main() -> std::io::Result<()> {
    // Die with the manager: a worker has no purpose once nobody reads its results.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // A batch system cancelling a job signals every process of it. The manager decides when a
    // worker stops (it drains first), so SIGTERM and SIGINT are caught and ignored here. A
    // handler, not SIG_IGN: commands the worker starts get the default disposition back.
    let noted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, noted.clone());
    }
    match serve() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn serve() -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let mut input = BufReader::with_capacity(1 << 16, stdin.lock());
    let stdout = std::io::stdout();
    let mut output = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut frame = Vec::new();
    send(
        &mut output,
        &mut frame,
        &FromWorker::Ready {
            pid: std::process::id(),
        },
    )?;
    let mut buf = Vec::new();
    let mut pending: Vec<TaskResult> = Vec::new();
    let mut pending_bytes = 0;
    let mut python = PythonHost::default();
    while let Some(msg) = read_frame::<ToWorker>(&mut input, &mut buf)? {
        match msg {
            ToWorker::Stop => break,
            ToWorker::Run { tasks } => {
                let n = tasks.len();
                let mut i = 0;
                while i < n {
                    // Consecutive Python tasks go to the interpreter together.
                    let results = match &tasks[i].function {
                        Function::Python(_) => python.run_front(&tasks[i..]),
                        _ => vec![exec::run(&tasks[i])],
                    };
                    i += results.len();
                    let mut slow = false;
                    for mut result in results {
                        crate::store::keep_large_result(&mut result);
                        if result.approx_size() > MAX_BODY {
                            let size = result.approx_size();
                            result = TaskResult::failure(
                                result.id,
                                FailureKind::Rejected,
                                format!(
                                    "result of {size} bytes exceeds the limit of {MAX_BODY} bytes"
                                ),
                            );
                        }
                        slow |= Duration::from_micros(result.run_us) >= FLUSH_AFTER;
                        pending_bytes += result.approx_size();
                        pending.push(result);
                    }
                    if slow || i >= n || pending_bytes > 4 * 1024 * 1024 {
                        pending_bytes = 0;
                        let results = std::mem::take(&mut pending);
                        send(&mut output, &mut frame, &FromWorker::Results { results })?;
                    }
                }
            }
        }
    }
    output.flush()
}

fn send(out: &mut impl Write, frame: &mut Vec<u8>, msg: &FromWorker) -> std::io::Result<()> {
    frame.clear();
    fxr_protocol::encode_into(frame, msg)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    out.write_all(frame)?;
    out.flush()
}
