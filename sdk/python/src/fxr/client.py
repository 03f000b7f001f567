"""The broker's REST API as Python calls: register functions, run them, fetch results."""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import pickle
import platform
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from ._http import BrokerError, Http

#: How arguments and results travel: JSON (the default), or pickle for any Python object.
SERIALIZERS = ("json", "pickle")


class TaskPending(Exception):
    """The task has not finished yet."""

    def __init__(self, task_id: int, state: str) -> None:
        super().__init__(f"task {task_id} is {state}")
        self.task_id = task_id
        self.state = state


class TaskFailed(Exception):
    """A task failed. `kind` is fxr's failure kind (`function_error`, `timeout`, ...);
    `remote_traceback` is the traceback the function raised on the endpoint, when it did."""

    def __init__(self, task_id: int, kind: str, message: str) -> None:
        self.task_id = task_id
        self.kind = kind
        self.remote_traceback = message if message.startswith("Traceback") else None
        super().__init__(f"task {task_id} failed ({kind}):\n{message}")


@dataclass
class ShellFunction:
    """A shell command as Globus Compute users know it: `{name}` placeholders are filled from
    the keyword arguments of each run; the result is `{stdout, stderr, returncode}`."""

    cmd: str
    walltime: Optional[float] = None
    env: Dict[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None
    name: Optional[str] = None

    def body(self) -> dict:
        b: dict = {"name": self.name or self.cmd[:64], "kind": "shell", "command": self.cmd}
        if self.walltime is not None:
            b["walltime_ms"] = int(self.walltime * 1000)
        if self.env:
            b["env"] = dict(self.env)
        if self.cwd:
            b["cwd"] = self.cwd
        return b


@dataclass
class MPIFunction(ShellFunction):
    """An MPI command: the endpoint's launcher runs it over `num_nodes` × `ranks_per_node`."""

    num_nodes: int = 1
    ranks_per_node: int = 1

    def body(self) -> dict:
        b = super().body()
        b["kind"] = "mpi"
        b["num_nodes"] = self.num_nodes
        b["ranks_per_node"] = self.ranks_per_node
        return b


def _config() -> Dict[str, str]:
    home = os.environ.get("FXR_HOME") or os.path.join(os.path.expanduser("~"), ".fxr")
    path = os.path.join(home, "config.toml")
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except OSError:
        return {}
    try:
        import tomllib  # Python 3.11+

        return {k: str(v) for k, v in tomllib.loads(text).items()}
    except ImportError:
        out = {}
        for line in text.splitlines():
            k, sep, v = line.partition("=")
            if sep:
                out[k.strip()] = v.strip().strip('"')
        return out


def encode_args(args: Sequence, kwargs: Dict[str, Any], serializer: str) -> Any:
    """The task arguments as fxr's Python functions take them."""
    if serializer == "pickle":
        return {"pickle": base64.b64encode(pickle.dumps((tuple(args), kwargs))).decode()}
    if serializer != "json":
        raise ValueError(f"serializer must be one of {SERIALIZERS}, not {serializer!r}")
    if not args and not kwargs:
        return {}
    body = {"args": list(args), "kwargs": kwargs}
    # Plain numbers, strings and None need no check; anything else is encoded once to see
    # that JSON can carry it (a tuple would come back a list, a set not at all).
    if all(type(a) in _SCALARS for a in args) and all(
        type(v) in _SCALARS for v in kwargs.values()
    ):
        return body
    try:
        json.dumps(body, allow_nan=False)
        _check_json(body)
        return body
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"arguments are not JSON ({e}); use serializer='pickle' for any Python object"
        ) from None


_SCALARS = (int, float, str, bool, type(None))


def _check_json(v: Any) -> None:
    """Refuses values JSON would change on the way (tuples, non-string keys)."""
    if isinstance(v, tuple):
        raise TypeError("a tuple would arrive as a list")
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise TypeError(f"dict key {k!r} is not a string")
            _check_json(x)
    elif isinstance(v, list):
        for x in v:
            _check_json(x)


def decode_result(value: Any) -> Any:
    """A Python function's result: pickled results come back as `{"pickle": BASE64}`."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("pickle"), str):
        return pickle.loads(base64.b64decode(value["pickle"]))
    return value


def function_source(fn: Callable) -> str:
    """The source of `fn`, dedented, as workers will compile it."""
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as e:
        raise ValueError(f"cannot read the source of {fn!r}: {e}") from None


class Batch:
    """Tasks to submit in one request (`Client.batch_run`)."""

    def __init__(self, serializer: str = "json") -> None:
        self.serializer = serializer
        self.tasks: List[dict] = []

    def add(self, function_id: str, endpoint_id: str, *args: Any, **kwargs: Any) -> None:
        self.tasks.append(
            {
                "function_id": function_id,
                "endpoint_id": endpoint_id,
                "args": encode_args(args, kwargs, self.serializer),
            }
        )

    def __len__(self) -> int:
        return len(self.tasks)


class Client:
    """A logged-in connection to an fxr broker.

    `url` and `token` default to `FXR_BROKER` and `FXR_TOKEN`, then to the login the command
    line saved (`fxr login`, in `~/.fxr/config.toml`)."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        serializer: str = "json",
    ) -> None:
        cfg = _config()
        url = url or os.environ.get("FXR_BROKER") or cfg.get("broker")
        token = token or os.environ.get("FXR_TOKEN") or cfg.get("token")
        if not url or not token:
            raise ValueError("no broker login: pass url and token, or run `fxr login`")
        if serializer not in SERIALIZERS:
            raise ValueError(f"serializer must be one of {SERIALIZERS}, not {serializer!r}")
        self.url = url
        self.serializer = serializer
        self.http = Http(url, token)
        self._endpoint_ids: Dict[str, str] = {}

    # Registration.

    def register_function(
        self,
        fn: Callable,
        *,
        name: Optional[str] = None,
        container: Optional[Union[str, dict]] = None,
        public: bool = False,
        share: Iterable[str] = (),
        walltime: Optional[float] = None,
        description: str = "",
    ) -> str:
        """Registers a Python function (its source, through `inspect.getsource`); its id.

        Names are unique per owner: registering the same function again answers its id, and a
        different one under a used name (`fn.__name__` by default) raises `BrokerError` 409;
        give `name=` to register a variant.

        `container` is `RUNTIME:IMAGE` or `{"runtime", "image", "options"}`."""
        source = function_source(fn)
        try:
            compile(source, f"<{fn.__name__}>", "exec")
        except SyntaxError as e:
            raise ValueError(f"the source of {fn.__name__} does not compile: {e}") from None
        body: dict = {
            "name": name or fn.__name__,
            "description": description or (inspect.getdoc(fn) or "")[:4096],
            "kind": "python",
            "source": source,
            "entry": fn.__name__,
            "python_version": platform.python_version(),
        }
        if walltime is not None:
            body["walltime_ms"] = int(walltime * 1000)
        return self._register(body, container, public, share)

    def register_shell(
        self,
        fn: Union[ShellFunction, str],
        *,
        container: Optional[Union[str, dict]] = None,
        public: bool = False,
        share: Iterable[str] = (),
    ) -> str:
        """Registers a shell command (a `ShellFunction` or its command); its id."""
        f = fn if isinstance(fn, ShellFunction) else ShellFunction(fn)
        return self._register(f.body(), container, public, share)

    def register_mpi(
        self,
        fn: Union[MPIFunction, str],
        *,
        num_nodes: int = 1,
        ranks_per_node: int = 1,
        container: Optional[Union[str, dict]] = None,
        public: bool = False,
        share: Iterable[str] = (),
    ) -> str:
        """Registers an MPI command (an `MPIFunction` or its command); its id."""
        f = (
            fn
            if isinstance(fn, MPIFunction)
            else MPIFunction(fn, num_nodes=num_nodes, ranks_per_node=ranks_per_node)
        )
        return self._register(f.body(), container, public, share)

    def _register(self, body, container, public, share) -> str:
        if container is not None:
            if isinstance(container, str):
                runtime, sep, image = container.partition(":")
                if not sep:
                    raise ValueError(f"container {container!r} is not RUNTIME:IMAGE")
                container = {"runtime": runtime, "image": image}
            body["container"] = container
        body["visibility"] = "public" if public else "private"
        body["shared_with"] = list(share)
        return self.http.request("POST", "/v1/functions", body)["id"]

    # Lookups.

    def functions(self) -> List[dict]:
        return self.http.request("GET", "/v1/functions")

    def endpoints(self) -> List[dict]:
        return self.http.request("GET", "/v1/endpoints")

    def endpoint_id(self, name_or_id: str) -> str:
        """The id of the endpoint called `name_or_id` (or that id itself)."""
        if name_or_id in self._endpoint_ids:
            return self._endpoint_ids[name_or_id]
        for e in self.endpoints():
            if name_or_id in (e["id"], e["name"]):
                self._endpoint_ids[name_or_id] = e["id"]
                return e["id"]
        raise ValueError(f"no endpoint {name_or_id!r}")

    # Running.

    def run(self, function_id: str, endpoint: str, *args: Any, **kwargs: Any) -> int:
        """Submits one task; its id."""
        return self.submit_tasks(
            [
                {
                    "function_id": function_id,
                    "endpoint_id": self.endpoint_id(endpoint),
                    "args": encode_args(args, kwargs, self.serializer),
                }
            ]
        )[0]

    def create_batch(self) -> Batch:
        return Batch(self.serializer)

    def batch_run(self, batch: Batch) -> List[int]:
        """Submits a batch in one request; the task ids, in order."""
        tasks = [dict(t, endpoint_id=self.endpoint_id(t["endpoint_id"])) for t in batch.tasks]
        return self.submit_tasks(tasks)

    def submit_tasks(self, tasks: List[dict]) -> List[int]:
        return self.http.request("POST", "/v1/tasks", {"tasks": tasks})["task_ids"]

    # Results.

    def get_task(self, task_id: int) -> dict:
        return self.http.request("GET", f"/v1/tasks/{int(task_id)}")

    def result_of(self, info: dict) -> Any:
        """The value of a finished task's record, or `TaskFailed`; fetches a result kept at the
        endpoint (`result_data`) when there is one."""
        if info["state"] == "failed":
            err = info.get("error") or {}
            raise TaskFailed(info["id"], err.get("kind", "?"), err.get("message", ""))
        if info["state"] != "succeeded":
            raise TaskPending(info["id"], info["state"])
        if "result_data" in info:
            buf = io.BytesIO()
            self.http.download(f"/v1/tasks/{info['id']}/data", buf)
            return decode_result(json.loads(buf.getvalue()))
        return decode_result(info.get("result"))

    def get_result(self, task_id: int) -> Any:
        """The task's value; raises `TaskFailed` (with the remote traceback) or `TaskPending`."""
        return self.result_of(self.get_task(task_id))

    def get_batch_result(self, task_ids: Sequence[int]) -> Dict[int, dict]:
        """For each id: `{"pending": bool, "status": state, "result"|"exception": ...}`."""
        out: Dict[int, dict] = {}
        ids = [int(i) for i in task_ids]
        for start in range(0, len(ids), 10000):
            got = self.http.request("POST", "/v1/tasks/query", {"ids": ids[start : start + 10000]})
            for info in got["tasks"]:
                entry: dict = {"status": info["state"], "pending": False}
                try:
                    entry["result"] = self.result_of(info)
                except TaskPending:
                    entry["pending"] = True
                except TaskFailed as e:
                    entry["exception"] = e
                out[info["id"]] = entry
        return out


__all__ = [
    "BrokerError",
    "Batch",
    "Client",
    "MPIFunction",
    "ShellFunction",
    "TaskFailed",
    "TaskPending",
]
