//! Client-side helpers over any [`FrontDoor`]: submit a set of tasks in batches and collect every
//! result, with a bounded wait.

use crate::links::front::FrontDoor;
use fxr_protocol::{ClientMsg, EndpointStatus, FrontMsg, Task, TaskResult};
use std::io;
use std::time::{Duration, Instant};

/// Submits `tasks` in batches of `batch` and waits until each has a result or `timeout` passes
/// without progress. `progress(new, total)` is called with the results as they arrive.
pub fn submit_and_wait(
    door: &mut dyn FrontDoor,
    tasks: Vec<Task>,
    batch: usize,
    timeout: Duration,
    progress: &mut dyn FnMut(&[TaskResult], usize),
) -> io::Result<Vec<TaskResult>> {
    let total = tasks.len();
    let mut results = Vec::with_capacity(total);
    submit_each(door, tasks.into_iter(), batch, timeout, &mut |r| {
        progress(&r, total);
        results.extend(r);
    })?;
    Ok(results)
}

/// Submits the tasks `tasks` yields, `batch` at a time, and hands each batch of results to
/// `each` as it arrives, until every task has one or `timeout` passes without one. Nothing is
/// kept: a client that only counts its results (a benchmark's) holds no task or result after
/// it is done with it.
pub fn submit_each(
    door: &mut dyn FrontDoor,
    mut tasks: impl ExactSizeIterator<Item = Task>,
    batch: usize,
    timeout: Duration,
    each: &mut dyn FnMut(Vec<TaskResult>),
) -> io::Result<()> {
    let total = tasks.len();
    loop {
        let chunk: Vec<Task> = tasks.by_ref().take(batch.max(1)).collect();
        if chunk.is_empty() {
            break;
        }
        door.send(ClientMsg::Submit { tasks: chunk })?;
    }
    let mut received = 0;
    let mut last_progress = Instant::now();
    while received < total {
        match door.recv(Duration::from_millis(200))? {
            Some(FrontMsg::Results { results: r }) => {
                received += r.len();
                each(r);
                last_progress = Instant::now();
            }
            Some(FrontMsg::Error { message }) => return Err(io::Error::other(message)),
            Some(_) => {}
            None => {
                if last_progress.elapsed() > timeout {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no result for {timeout:?}; {received} of {total} results received"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Asks for the endpoint's status.
pub fn status(door: &mut dyn FrontDoor, timeout: Duration) -> io::Result<EndpointStatus> {
    door.send(ClientMsg::Status)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(FrontMsg::Status(s)) = door.recv(Duration::from_millis(100))? {
            return Ok(s);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the endpoint did not answer a status request",
    ))
}

/// Waits until at least `workers` workers are connected.
pub fn wait_for_workers(
    door: &mut dyn FrontDoor,
    workers: u64,
    timeout: Duration,
) -> io::Result<EndpointStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(door, Duration::from_secs(5))?;
        let have: u64 = s.managers.iter().map(|m| u64::from(m.workers)).sum();
        if have >= workers {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("only {have} of {workers} workers connected after {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies an object kept in a node's store (a result returned by reference) into `out`, a chunk
/// at a time through the front door; checks each chunk against the reference and the whole
/// against its checksum. Returns the bytes written.
pub fn fetch(
    door: &mut dyn FrontDoor,
    r: &fxr_protocol::DataRef,
    out: &mut dyn io::Write,
    timeout: Duration,
) -> io::Result<u64> {
    let mut hasher = crc32fast::Hasher::new();
    let mut offset = 0u64;
    while offset < r.size {
        let len = fxr_protocol::DATA_CHUNK.min(r.size - offset);
        door.send(ClientMsg::Fetch {
            data: r.clone(),
            offset,
            len,
        })?;
        let deadline = Instant::now() + timeout;
        let reply = loop {
            match door.recv(Duration::from_millis(200))? {
                Some(FrontMsg::Data(reply)) => break reply,
                Some(FrontMsg::Error { message }) => return Err(io::Error::other(message)),
                Some(_) => {}
                None if Instant::now() > deadline => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer for {timeout:?} reading {}", r.key),
                    ))
                }
                None => {}
            }
        };
        let bytes = r.accept(reply, offset, len).map_err(io::Error::other)?;
        hasher.update(&bytes);
        out.write_all(&bytes)?;
        offset += bytes.len() as u64;
    }
    let sum = hasher.finalize();
    if sum != r.checksum {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is corrupt: checksum {sum:08x}, the reference says {:08x}",
                r.key, r.checksum
            ),
        ));
    }
    Ok(offset)
}
