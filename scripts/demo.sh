#!/usr/bin/env bash
# The demo: a local endpoint with real worker processes runs 10,000 no-op tasks and 100 shell
# tasks, prints the throughput and a few shell results, then stops and checks nothing is left.
set -euo pipefail
FXR=${FXR:-target/release/fxr}
work=$(mktemp -d)
endpoint_pid=""
cleanup() {
    if [[ -n "$endpoint_pid" ]] && kill -0 "$endpoint_pid" 2>/dev/null; then
        kill -TERM "$endpoint_pid" 2>/dev/null || true
        wait "$endpoint_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting a local endpoint (1 block, 2 worker processes)"
"$FXR" --output json endpoint start --local --blocks 1 --workers-per-node 2 \
    --address-file "$work/addr" >"$work/endpoint.json" &
endpoint_pid=$!
for _ in $(seq 1 200); do [[ -s "$work/addr" ]] && break; sleep 0.05; done
addr=$(cat "$work/addr")
pilots=$(python3 -c 'import json,sys; print(" ".join(str(p) for p in json.load(open(sys.argv[1]))["pilot_pids"]))' "$work/endpoint.json")
echo "   front door $addr, pilot pids: $pilots"

echo "== 10,000 noop tasks"
"$FXR" submit noop --endpoint "$addr" --count 10000 --progress

echo "== 100 shell tasks"
for i in $(seq 0 99); do echo "{\"i\": $i}"; done >"$work/shell.jsonl"
"$FXR" --output json submit --endpoint "$addr" --shell 'echo "task {i} ran in pid $$ on $(hostname)"' \
    --args-file "$work/shell.jsonl" --progress >"$work/shell.out"
echo "   first results:"
head -3 "$work/shell.out" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("   task %d: %s (exit %d)" % (r["task"], r["result"]["stdout"].strip(), r["result"]["returncode"]))'

echo "== a shell task past its walltime"
"$FXR" run --endpoint "$addr" --shell 'sleep 10' --walltime 200ms || echo "   (exit code $? as documented: a task failed)"

echo "== stopping"
"$FXR" endpoint stop --endpoint "$addr"
wait "$endpoint_pid"
endpoint_pid=""
for p in $pilots; do
    if kill -0 "$p" 2>/dev/null; then echo "pilot $p still running" >&2; exit 1; fi
done
echo "== done: endpoint and all its processes have exited"
