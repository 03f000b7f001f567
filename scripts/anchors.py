"""Parsl's HighThroughputExecutor on this machine, with the workload fxr's experiments use:
2 workers, no-op tasks. Writes one JSON object: throughput of N tasks submitted at once, and the
latency of tasks sent one at a time (p50, p99). Usage: anchors.py OUT.json [N] [LATENCY_N]"""
import json
import sys
import time

import parsl
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider


def noop():
    return None


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    lat_n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    config = Config(
        executors=[
            HighThroughputExecutor(
                label="htex",
                max_workers_per_node=2,
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            )
        ],
        run_dir="/tmp/fxr-anchors-parsl",
    )
    dfk = parsl.load(config)
    app = parsl.python_app(noop)
    app().result()  # warm up: the block is running
    start = time.time()
    futures = [app() for _ in range(n)]
    for f in futures:
        f.result()
    secs = time.time() - start
    lat = []
    for _ in range(lat_n):
        t = time.time()
        app().result()
        lat.append((time.time() - t) * 1000)
    lat.sort()
    dfk.cleanup()
    result = {
        "parsl_version": parsl.__version__,
        "parsl_htex_tasks": n,
        "parsl_htex_tasks_per_s": round(n / secs, 1),
        "parsl_htex_p50_ms": round(lat[len(lat) // 2], 3),
        "parsl_htex_p99_ms": round(lat[int(len(lat) * 0.99)], 3),
        "workers": 2,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
