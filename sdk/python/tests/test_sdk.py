"""The Python SDK against a real broker and endpoint."""

import os
import time

import pytest

from fxr import BrokerError, Client, Executor, ShellFunction, TaskFailed, TaskPending


def add(a, b=0):
    return a + b


def fails(message):
    def inner():
        raise KeyError(message)

    return inner()


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def double(x):
    return x * 2


def big(n):
    return "x" * n


def pid():
    import os

    return os.getpid()


def failure_of(client, task_id, limit=60.0):
    """The TaskFailed a task ends with; fails the test if it succeeds or never finishes."""
    deadline = time.time() + limit
    while True:
        try:
            value = client.get_result(task_id)
        except TaskPending:
            assert time.time() < deadline, f"task {task_id} did not finish in {limit} s"
            time.sleep(0.05)
            continue
        except TaskFailed as e:
            return e
        pytest.fail(f"task {task_id} succeeded with {value!r}")


def test_a_submitted_function_returns_its_value_and_has_a_task_id(executor):
    fut = executor.submit(add, 2, b=3)
    assert fut.result(timeout=60) == 5
    assert isinstance(fut.task_id, int)


def test_map_keeps_order_and_batches_all_submissions(executor):
    n = 500
    assert list(executor.map(add, range(n), range(n), timeout=120)) == [2 * i for i in range(n)]


def test_the_interpreter_is_kept_between_tasks(executor):
    pids = {f.result(60) for f in [executor.submit(pid) for _ in range(20)]}
    # Two workers: at most two interpreters served twenty tasks.
    assert 1 <= len(pids) <= 2


def test_client_batches_and_batch_results(client, endpoint):
    fid = client.register_function(add)
    batch = client.create_batch()
    for i in range(10):
        batch.add(fid, endpoint, i, b=1)
    ids = client.batch_run(batch)
    assert len(ids) == 10
    deadline = time.time() + 60
    while True:
        got = client.get_batch_result(ids)
        if not any(v["pending"] for v in got.values()):
            break
        assert time.time() < deadline, got
        time.sleep(0.05)
    assert [got[i]["result"] for i in ids] == [i + 1 for i in range(10)]
    assert client.get_result(ids[3]) == 4


def test_a_remote_exception_raises_with_its_traceback(executor):
    fut = executor.submit(fails, "the key")
    with pytest.raises(TaskFailed) as e:
        fut.result(60)
    assert e.value.kind == "function_error"
    tb = e.value.remote_traceback
    assert tb is not None and tb.startswith("Traceback")
    assert "in fails" in tb and "in inner" in tb
    assert "KeyError: 'the key'" in tb


def test_pickled_numpy_arrays_travel_both_ways(client, endpoint):
    np = pytest.importorskip("numpy")
    with Executor(endpoint=endpoint, client=client, serializer="pickle") as ex:
        a = np.arange(12, dtype=np.float64).reshape(3, 4)
        out = ex.submit(double, a).result(60)
    assert isinstance(out, np.ndarray)
    assert (out == a * 2).all()


def test_json_refuses_what_it_cannot_carry(executor):
    with pytest.raises(TypeError, match="pickle"):
        executor.submit(add, {1, 2})


def test_a_walltime_fails_the_task_as_timeout_and_the_next_task_runs(client, endpoint):
    # Names are unique per owner: this variant of `nap` gets a name of its own.
    fid = client.register_function(nap, name="nap_with_walltime", walltime=0.5)
    with Executor(endpoint=endpoint, client=client) as ex:
        with pytest.raises(TaskFailed) as e:
            ex.submit(fid, 30).result(60)
        assert e.value.kind == "timeout"
        assert ex.submit(fid, 0.01).result(60) == 0.01


def test_futures_reattach_after_the_client_restarts(client, endpoint):
    fid = client.register_function(nap)
    with Executor(endpoint=endpoint, client=client) as ex:
        futs = [ex.submit(fid, 0.2) for _ in range(4)]
        ids = [f.wait_task_id(60) for f in futs]
        ex.shutdown(wait=False, cancel_futures=True)
    # A new client, as after a restart: the same tasks, by id.
    with Executor(endpoint=endpoint, client=Client()) as again:
        back = again.reattach(ids)
        assert [f.result(60) for f in back] == [0.2] * 4
        assert [f.task_id for f in back] == ids


def test_a_large_result_is_fetched_from_the_endpoint(executor, client):
    fut = executor.submit(big, 3_000_000)
    assert fut.result(60) == "x" * 3_000_000
    info = client.get_task(fut.task_id)
    assert "result_data" in info and "result" not in info


def test_shell_functions_take_keyword_arguments(executor):
    out = executor.submit(ShellFunction("echo hello {name}"), name="shell").result(60)
    assert out["stdout"] == "hello shell\n" and out["returncode"] == 0


def test_a_syntax_error_is_reported_when_the_worker_loads_the_function(client, endpoint):
    body = {
        "name": "broken",
        "kind": "python",
        "source": "def broken(:\n    pass\n",
        "entry": "broken",
    }
    fid = client.http.request("POST", "/v1/functions", body)["id"]
    e = failure_of(client, client.run(fid, endpoint))
    assert e.kind == "function_error"
    assert "syntax error" in str(e) and "SyntaxError" in str(e)


def test_pickles_across_python_versions_are_refused_with_both_versions_named(client, endpoint):
    import inspect

    body = {
        "name": "old",
        "kind": "python",
        "source": inspect.getsource(add),
        "entry": "add",
        "python_version": "2.7.18",
    }
    fid = client.http.request("POST", "/v1/functions", body)["id"]
    pickled = Client(serializer="pickle")
    e = failure_of(pickled, pickled.run(fid, endpoint, 1, 2))
    assert "2.7.18" in str(e) and "same Python" in str(e)


def test_bad_input_is_a_clear_error(client, endpoint):
    with pytest.raises(BrokerError) as e:
        client.http.request(
            "POST", "/v1/functions", {"name": "x", "kind": "python", "source": "x = 1", "entry": "1x"}
        )
    assert e.value.status == 422 and "entry" in e.value.message
    with pytest.raises(ValueError, match="no endpoint"):
        client.endpoint_id("no-such-endpoint")


def image_label():
    return open("/etc/fxr-image").read().strip()


def test_a_container_bound_function_runs_in_its_container(client, endpoint):
    container = os.environ.get("FXR_TEST_CONTAINER")
    if not container:
        pytest.skip("no container runtime here (FXR_TEST_CONTAINER unset)")
    with Executor(endpoint=endpoint, client=client, container=container) as ex:
        assert ex.submit(image_label).result(120) == "sdk-python-image"
        # The container's worker keeps its interpreter for the next task of its type.
        assert ex.submit(image_label).result(120) == "sdk-python-image"
