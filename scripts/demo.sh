#!/usr/bin/env bash
# The demo: a broker and two local endpoints (real pilot and worker processes on this machine).
# Functions are registered, 10,000 tasks go through the REST API across both endpoints, shell
# tasks show their output, and everything is stopped with nothing left behind.
set -euo pipefail
FXR=${FXR:-target/release/fxr}
FXR=$(realpath "$FXR")
work=$(mktemp -d)
export FXR_HOME="$work/home"
pids=()
cleanup() {
    # Endpoints run in the background; stop any still running, then the broker.
    for e in east west; do "$FXR" endpoint stop "$e" >/dev/null 2>&1 || true; done
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_for_file() { for _ in $(seq 1 200); do [[ -s "$1" ]] && return 0; sleep 0.05; done; echo "timed out waiting for $1" >&2; return 1; }

echo "== broker"
token=$("$FXR" broker user add demo --db "$work/broker.db")
"$FXR" broker serve --db "$work/broker.db" --listen 127.0.0.1:0 --address-file "$work/broker.addr" >/dev/null &
pids+=($!)
wait_for_file "$work/broker.addr"
broker=$(cat "$work/broker.addr")
echo "$token" | "$FXR" login --broker "$broker"   # the token on stdin, never in `ps`

echo "== two endpoints, 2 worker processes each, in the background"
"$FXR" endpoint create east --workers-per-node 2 >/dev/null
"$FXR" endpoint create west --workers-per-node 2 >/dev/null
"$FXR" endpoint start east
"$FXR" endpoint start west
for _ in $(seq 1 200); do
    [[ $("$FXR" --output json endpoint list | python3 -c 'import json,sys; print(sum(e["connected"] and e["workers"] > 0 for e in json.load(sys.stdin)))') == 2 ]] && break
    sleep 0.05
done
"$FXR" endpoint list

echo "== functions"
"$FXR" function register --name noop --builtin noop >/dev/null
"$FXR" function register --name where --shell 'echo "task {i} ran on $(hostname) in pid $$"' >/dev/null
"$FXR" function register --name slow --shell 'sleep 10' --walltime 300ms >/dev/null
"$FXR" function list

echo "== 10,000 noop tasks through the REST API, round-robin over both endpoints"
"$FXR" submit --function noop --endpoint east,west --policy round-robin --count 10000 --progress

echo "== 100 shell tasks, least-loaded"
for i in $(seq 0 99); do echo "{\"i\": $i}"; done >"$work/shell.jsonl"
"$FXR" --output json submit --function where --endpoint east,west --policy least-loaded \
    --args-file "$work/shell.jsonl" --progress >"$work/shell.out"
head -3 "$work/shell.out" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("   task %d: %s" % (r["task"], r["result"]["stdout"].strip()))'

echo "== a shell task past its walltime"
"$FXR" run --function slow --endpoint east || echo "   (exit code $? as documented: a task failed)"

echo "== endpoint status"
"$FXR" endpoint status east
echo "== the end of its log"
"$FXR" endpoint logs east -n 3

echo "== stopping"
"$FXR" endpoint stop east
"$FXR" endpoint stop west
kill -TERM "${pids[0]}"
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
echo "== done: broker, endpoints and all their processes have exited"
