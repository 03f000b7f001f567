"""Python no-op functions, 2 workers, on fxr (through the SDK's Executor, a real broker and a
real endpoint; its SQLite database on disk, each commit fsync'd, and again on /dev/shm),
Parsl's HighThroughputExecutor, Ray and Dask distributed, in one run on this
machine. For each: tasks/s of N tasks submitted at once (median of RUNS runs) and the round trip
of one task at a time (p50, p99 of LAT tasks). Systems that are not installed are left out.

Usage: python_compare.py FXR_BINARY OUT.json [N] [LAT] [RUNS]
Prints one JSON object (also written to OUT.json).
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def noop():
    return None


def measure(submit_all, one, n, lat_n, runs):
    """submit_all(n) runs n tasks to completion; one() runs a single task."""
    one()  # warm: workers up, function registered or shipped
    rates = []
    for _ in range(runs):
        t = time.perf_counter()
        submit_all(n)
        rates.append(n / (time.perf_counter() - t))
    lat = []
    for _ in range(lat_n):
        t = time.perf_counter()
        one()
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {
        "tasks_per_s": round(statistics.median(rates), 1),
        "runs_tasks_per_s": [round(r, 1) for r in rates],
        "p50_ms": round(lat[len(lat) // 2], 3),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fxr(binary, n, lat_n, runs, db_dir=None):
    sdk = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python", "src")
    sys.path.insert(0, sdk)
    from fxr import Client, Executor

    tmp = tempfile.mkdtemp(prefix="fxr-compare-", dir=db_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = []
    env = dict(os.environ, FXR_HOME=os.path.join(tmp, "home"), FXR_BROKER=url)
    try:
        db = os.path.join(tmp, "broker.db")
        procs.append(
            subprocess.Popen(
                [binary, "broker", "serve", "--listen", f"127.0.0.1:{port}", "--db", db],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("the broker did not start")
                time.sleep(0.05)
        token = subprocess.check_output(
            [binary, "broker", "user", "add", "bench", "--db", db], text=True
        ).strip()
        env["FXR_TOKEN"] = token
        subprocess.check_call(
            [binary, "endpoint", "create", "bench", "--workers-per-node", "2"],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        toml = os.path.join(tmp, "home", "endpoints", "bench", "endpoint.toml")
        with open(toml) as f:
            text = f.read()
        # The workers run the same interpreter as the other systems.
        line = f'[python]\nexecutable = "{sys.executable}"\n'
        text = text.replace("[python]\n", line, 1) if "[python]\n" in text else text + "\n" + line
        with open(toml, "w") as f:
            f.write(text)
        procs.append(
            subprocess.Popen(
                [binary, "endpoint", "start", "bench", "--foreground"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        client = Client(url, token)
        deadline = time.time() + 60
        while not any(e.get("connected") for e in client.endpoints()):
            if time.time() > deadline:
                raise RuntimeError("the endpoint did not connect")
            time.sleep(0.1)
        with Executor(endpoint="bench", client=client) as ex:
            fid = ex.register(noop)

            def submit_all(k):
                for f in [ex.submit(fid) for _ in range(k)]:
                    f.result(300)

            return measure(submit_all, lambda: ex.submit(fid).result(60), n, lat_n, runs)
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM) if p.args[1] == "endpoint" else p.terminate()
                p.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def parsl_htex(n, lat_n, runs):
    import parsl
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    run_dir = tempfile.mkdtemp(prefix="fxr-compare-parsl-")
    dfk = parsl.load(
        Config(
            executors=[
                HighThroughputExecutor(
                    label="htex",
                    max_workers_per_node=2,
                    provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
                )
            ],
            run_dir=run_dir,
        )
    )
    app = parsl.python_app(noop)
    try:

        def submit_all(k):
            for f in [app() for _ in range(k)]:
                f.result()

        out = measure(submit_all, lambda: app().result(), n, lat_n, runs)
        out["version"] = parsl.__version__
        return out
    finally:
        dfk.cleanup()
        parsl.clear()
        shutil.rmtree(run_dir, ignore_errors=True)


def ray_tasks(n, lat_n, runs):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(noop)

        def submit_all(k):
            ray.get([remote.remote() for _ in range(k)])

        out = measure(submit_all, lambda: ray.get(remote.remote()), n, lat_n, runs)
        out["version"] = ray.__version__
        return out
    finally:
        ray.shutdown()


def dask_distributed(n, lat_n, runs):
    import distributed

    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    try:

        def submit_all(k):
            client.gather([client.submit(noop, pure=False) for _ in range(k)])

        out = measure(
            submit_all, lambda: client.submit(noop, pure=False).result(), n, lat_n, runs
        )
        out["version"] = distributed.__version__
        return out
    finally:
        client.close()
        cluster.close()


def main():
    binary, out_path = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    lat_n = int(sys.argv[4]) if len(sys.argv) > 4 else 500
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    result = {"workers": 2, "tasks": n, "latency_tasks": lat_n, "runs": runs, "python": sys.version.split()[0]}
    systems = [
        ("fxr", lambda: fxr(binary, n, lat_n, runs)),
        # The same with the broker's database on a memory file system: every commit still
        # fsyncs, but the fsync is free, as the others keep no durable state at all.
        ("fxr_db_on_tmpfs", lambda: fxr(binary, n, lat_n, runs, "/dev/shm")),
        ("parsl_htex", lambda: parsl_htex(n, lat_n, runs)),
        ("ray", lambda: ray_tasks(n, lat_n, runs)),
        ("dask", lambda: dask_distributed(n, lat_n, runs)),
    ]
    for name, run in systems:
        try:
            result[name] = run()
        except ImportError as e:
            result[name] = {"unavailable": str(e)}
        print(name, json.dumps(result[name]), file=sys.stderr, flush=True)
    others = [
        v["tasks_per_s"]
        for k, v in result.items()
        if k in ("parsl_htex", "ray", "dask") and isinstance(v, dict) and "tasks_per_s" in v
    ]
    if "tasks_per_s" in result.get("fxr", {}) and others:
        result["fxr_over_fastest_other"] = round(result["fxr"]["tasks_per_s"] / max(others), 2)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
