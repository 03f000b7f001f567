"""`Executor`: run functions on an fxr endpoint as `concurrent.futures` futures.

Submissions queue in memory and a background thread sends them in batches (one request per
`batch_size` tasks, or whatever has queued while the last request was in flight). Results come
back over one server-sent-event stream of the caller's tasks, opened before the first
submission, so nothing is polled and nothing finished is missed; if the stream breaks, the
executor reconnects and asks for the tasks still open.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from .client import Client, MPIFunction, ShellFunction, TaskFailed, encode_args

Fn = Union[Callable, ShellFunction, MPIFunction, str]


# Most result ids kept while their submissions' answers are awaited.
_MAX_EARLY = 100_000

# One condition for every future's task id: ids are set a batch at a time, so one wake-up per
# batch instead of one event per future.
_IDS = threading.Condition()


# Guards the lazy creation of a future's condition (below).
_LAZY = threading.Lock()


class TaskFuture(concurrent.futures.Future):
    """A future for one task; `task_id` is set once the broker has accepted it.

    Its condition variable is made only when something waits on it: most futures of a large
    run finish before anyone asks, and a `threading.Condition` per task was a third of the
    client's time. Creating the condition and finishing without one both hold `_LAZY`, so a
    waiter either finds the future finished or is woken when it finishes."""

    def __init__(self) -> None:
        # What `Future.__init__` sets, except `_condition` (see `__getattr__`).
        self._state = concurrent.futures._base.PENDING
        self._result = None
        self._exception = None
        self._waiters: list = []
        self._done_callbacks: list = []
        self.task_id: Optional[int] = None

    def __getattr__(self, name: str) -> Any:
        if name != "_condition":
            raise AttributeError(name)
        with _LAZY:
            cond = self.__dict__.get("_condition")
            if cond is None:
                cond = threading.Condition()
                self.__dict__["_condition"] = cond
            return cond

    def _finish_unwatched(self, result: Any, exception: Optional[BaseException]) -> bool:
        """Finishes the future without a condition if nobody has made one; False if one
        exists (then the usual path must notify it)."""
        with _LAZY:
            if "_condition" in self.__dict__:
                return False
            if self._state != concurrent.futures._base.PENDING:
                raise concurrent.futures.InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._exception = exception
            self._state = concurrent.futures._base.FINISHED
        self._invoke_callbacks()
        return True

    def set_result(self, result: Any) -> None:
        if not self._finish_unwatched(result, None):
            super().set_result(result)

    def result(self, timeout: Optional[float] = None) -> Any:
        # A finished future never changes again: no condition needed to read it.
        if self._state == concurrent.futures._base.FINISHED:
            if self._exception is not None:
                raise self._exception
            return self._result
        return super().result(timeout)

    def set_exception(self, exception: Optional[BaseException]) -> None:
        if not self._finish_unwatched(None, exception):
            super().set_exception(exception)

    def wait_task_id(self, timeout: Optional[float] = None) -> Optional[int]:
        """Waits until the task has an id (or its submission failed)."""
        with _IDS:
            _IDS.wait_for(lambda: self.task_id is not None or self.done(), timeout)
        return self.task_id


class Executor(concurrent.futures.Executor):
    """Runs functions on one endpoint.

    `fn` may be a Python function (registered once per executor, by identity), a
    `ShellFunction` or `MPIFunction`, or the id of a registered function."""

    def __init__(
        self,
        endpoint: str,
        client: Optional[Client] = None,
        batch_size: int = 1024,
        serializer: Optional[str] = None,
        container: Optional[Union[str, dict]] = None,
    ) -> None:
        self.client = client or Client()
        self.endpoint_id = self.client.endpoint_id(endpoint)
        self.batch_size = max(1, batch_size)
        self.serializer = serializer or self.client.serializer
        self.container = container
        self._registered: Dict[int, str] = {}
        # The registered objects themselves, so an id() is never reused by another object.
        self._keep: List[Any] = []
        self._register_lock = threading.Lock()
        # Results that arrived before their submission's answer was read (or of tasks that
        # are not this executor's: the stream carries all of the caller's), newest last,
        # bounded: an id is looked up only just after its submission.
        self._early: Dict[int, None] = {}
        self._futures: Dict[int, TaskFuture] = {}
        self._lock = threading.Lock()
        # Submissions waiting for the sender: a deque (appends are atomic) and an event that
        # wakes the sender when it sleeps.
        self._queue: "collections.deque[Optional[Tuple[TaskFuture, dict]]]" = collections.deque()
        self._wakeup = threading.Event()
        self._closed = False
        self._stop = threading.Event()
        self._stream_ready = threading.Event()
        self._stream_error: Optional[BaseException] = None
        self._results = threading.Thread(target=self._follow, name="fxr-results", daemon=True)
        self._results.start()
        if not self._stream_ready.wait(60):
            raise TimeoutError("the broker's result stream did not open within 60 s")
        if self._stream_error is not None:
            raise self._stream_error
        self._sender = threading.Thread(target=self._send, name="fxr-submit", daemon=True)
        self._sender.start()

    # Registration.

    def register(self, fn: Fn) -> str:
        """The function id for `fn`, registering it on first use."""
        if isinstance(fn, str):
            return fn
        key = id(fn)
        with self._register_lock:
            fid = self._registered.get(key)
            if fid is None:
                if isinstance(fn, MPIFunction):
                    fid = self.client.register_mpi(fn, container=self.container)
                elif isinstance(fn, ShellFunction):
                    fid = self.client.register_shell(fn, container=self.container)
                else:
                    fid = self.client.register_function(fn, container=self.container)
                self._registered[key] = fid
                self._keep.append(fn)
        return fid

    # Submission.

    def submit(self, fn: Fn, /, *args: Any, **kwargs: Any) -> TaskFuture:
        if self._closed:
            raise RuntimeError("cannot submit after shutdown")
        fid = self.register(fn)
        if isinstance(fn, ShellFunction):
            task_args: Any = dict(kwargs)
        else:
            task_args = encode_args(args, kwargs, self.serializer)
        fut = TaskFuture()
        self._queue.append(
            (fut, {"function_id": fid, "endpoint_id": self.endpoint_id, "args": task_args})
        )
        if not self._wakeup.is_set():
            self._wakeup.set()
        return fut

    def map(
        self,
        fn: Fn,
        *iterables: Iterable,
        timeout: Optional[float] = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        futures = [self.submit(fn, *args) for args in zip(*iterables)]

        def results() -> Iterator[Any]:
            deadline = None if timeout is None else time.monotonic() + timeout
            for f in futures:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                yield f.result(left)

        return results()

    def reattach(self, task_ids: Iterable[int]) -> List[TaskFuture]:
        """Futures for tasks submitted earlier (by this or another process)."""
        futures = []
        ids = [int(t) for t in task_ids]
        with self._lock:
            for t in ids:
                fut = self._futures.get(t)
                if fut is None:
                    fut = TaskFuture()
                    fut.task_id = t
                    self._futures[t] = fut
                futures.append(fut)
        # Those already finished resolve now; the others arrive on the stream.
        self._catch_up(ids)
        return futures

    def _send(self) -> None:
        done = False
        while not done:
            self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = []
                while self._queue and len(batch) < self.batch_size:
                    item = self._queue.popleft()
                    if item is None:
                        done = True
                        break
                    batch.append(item)
                if batch:
                    self._submit(batch)
                if done:
                    break

    def _submit(self, batch: List[Tuple[TaskFuture, dict]]) -> None:
        try:
            ids = self.client.submit_tasks([t for _, t in batch])
        except BaseException as e:  # noqa: BLE001 - every future must learn of it
            for fut, _ in batch:
                fut.set_exception(e)
            with _IDS:
                _IDS.notify_all()
            return
        with self._lock:
            for (fut, _), tid in zip(batch, ids):
                fut.task_id = tid
                self._futures[tid] = fut
        with _IDS:
            _IDS.notify_all()
        # A result may have arrived before the id was known: ask for those once.
        with self._lock:
            early = [tid for tid in ids if tid in self._early]
        if early:
            self._catch_up(early)

    # Results.

    def _note_early(self, tid: int) -> None:
        self._early[tid] = None
        while len(self._early) > _MAX_EARLY:
            self._early.pop(next(iter(self._early)))

    def _resolve_all(self, infos: List[dict]) -> None:
        """Resolves a group of results, taking the lock once."""
        with self._lock:
            found = [(info, self._futures.pop(info["id"], None)) for info in infos]
            for info, fut in found:
                if fut is None:
                    self._note_early(info["id"])
        for info, fut in found:
            if fut is None or fut._state != concurrent.futures._base.PENDING:
                continue
            try:
                fut.set_result(self.client.result_of(info))
            except BaseException as e:  # noqa: BLE001 - TaskFailed, or a failed download
                fut.set_exception(e)

    def _resolve(self, info: dict) -> None:
        tid = info["id"]
        with self._lock:
            fut = self._futures.pop(tid, None)
            if fut is None:
                # Not ours, or its submission's answer has not been read yet.
                self._note_early(tid)
                return
        if fut._state != concurrent.futures._base.PENDING:
            return
        try:
            fut.set_result(self.client.result_of(info))
        except TaskFailed as e:
            fut.set_exception(e)
        except BaseException as e:  # noqa: BLE001
            fut.set_exception(e)

    def _catch_up(self, ids: List[int]) -> None:
        for start in range(0, len(ids), 10000):
            got = self.client.http.request("POST", "/v1/tasks/query", {"ids": ids[start : start + 10000]})
            for info in got["tasks"]:
                if info["state"] in ("succeeded", "failed"):
                    with self._lock:
                        self._early.pop(info["id"], None)
                    self._resolve(info)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                body = {"all": True, "grouped": True}
                for event, data in self.client.http.stream("/v1/tasks/stream", body):
                    if event == "open":
                        self._stream_ready.set()
                    elif event == "results":
                        self._resolve_all(json.loads(data))
                    elif event == "result":
                        self._resolve(json.loads(data))
                    if self._stop.is_set():
                        return
            except BaseException as e:  # noqa: BLE001
                if not self._stream_ready.is_set():
                    self._stream_error = e
                    self._stream_ready.set()
                    return
            if self._stop.is_set():
                return
            # Reconnected: whatever finished meanwhile comes from the store.
            time.sleep(0.5)
            with self._lock:
                open_ids = list(self._futures)
            try:
                self._catch_up(open_ids)
            except BaseException:  # noqa: BLE001
                pass

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        self._queue.append(None)
        self._wakeup.set()
        if cancel_futures:
            # The tasks go on at the endpoint (reattach to them by id); these futures stop here.
            with self._lock:
                pending = list(self._futures.values())
                self._futures.clear()
            for f in pending:
                if f.cancel():
                    f.set_running_or_notify_cancel()
        if wait:
            self._sender.join()
            with self._lock:
                pending = list(self._futures.values())
            concurrent.futures.wait(pending)
        self._stop.set()


__all__ = ["Executor", "TaskFuture"]
