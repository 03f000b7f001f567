"""fxr: run Python functions, shell commands and MPI programs on fxr endpoints.

`Client` speaks the broker's REST API; `Executor` is a `concurrent.futures.Executor` whose
futures resolve as results stream back from the broker.
"""

from ._http import BrokerError
from .client import Batch, Client, MPIFunction, ShellFunction, TaskFailed, TaskPending
from .executor import Executor, TaskFuture

__all__ = [
    "Batch",
    "BrokerError",
    "Client",
    "Executor",
    "MPIFunction",
    "ShellFunction",
    "TaskFailed",
    "TaskFuture",
    "TaskPending",
]
__version__ = "0.1.0"
