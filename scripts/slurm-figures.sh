#!/usr/bin/env bash
# Figures for the Slurm provider on a real Slurm cluster on this machine (4 slurmd nodes):
# time from `fxr endpoint start` to the first result, by nodes per block, and no-op tasks/s
# through a 4-node block. Writes results/slurm/{raw.csv,summary.md,SETUP.md}.
set -euo pipefail
FXR=$(realpath "${FXR:-target/release/fxr}")
out=results/slurm
work=$(mktemp -d)
ep_pid=""
cleanup() {
    [[ -n "$ep_pid" ]] && kill -TERM "$ep_pid" 2>/dev/null && wait "$ep_pid" 2>/dev/null || true
    scripts/slurm-cluster.sh down "$work/slurm" || true
    rm -rf "$work"
}
trap cleanup EXIT
eval "export $(scripts/slurm-cluster.sh up "$work/slurm" 4 | tail -1)"
mkdir -p "$out"
echo "nodes_per_block,start_to_first_result_s,tasks,tasks_per_s" > "$out/raw.csv"
now() { date +%s.%N; }
for nodes in 1 2 4; do
    dir="$work/ep$nodes"; mkdir -p "$dir"
    cat > "$dir/endpoint.toml" <<TOML
name = "ep$nodes"
[engine]
workers_per_node = 2
[provider]
kind = "slurm"
partition = "debug"
walltime = "00:10:00"
nodes_per_block = $nodes
init_blocks = 1
max_blocks = 1
launcher = "srun"
TOML
    t0=$(now)
    "$FXR" endpoint start "ep$nodes" --foreground --dir "$dir" --address-file "$dir/addr" >/dev/null 2>"$dir/log" &
    ep_pid=$!
    for _ in $(seq 1 300); do [[ -s "$dir/addr" ]] && break; sleep 0.02; done
    addr=$(cat "$dir/addr")
    "$FXR" run noop --endpoint "$addr" >/dev/null
    first=$(python3 -c "print(round($(now) - $t0, 3))")
    # Wait for every node of the block before measuring throughput.
    for _ in $(seq 1 300); do
        [[ $("$FXR" --output json endpoint status --endpoint "$addr" | python3 -c 'import json,sys; print(json.load(sys.stdin)["managers"])') == "$nodes" ]] && break
        sleep 0.1
    done
    tasks=100000
    rate=$("$FXR" submit noop --endpoint "$addr" --count $tasks --batch 10000 2>&1 | sed -n 's/.* s, \([0-9]*\) tasks\/s/\1/p')
    echo "$nodes,$first,$tasks,$rate" >> "$out/raw.csv"
    echo "nodes=$nodes first result after ${first}s, ${rate} tasks/s"
    "$FXR" endpoint stop --endpoint "$addr"
    wait "$ep_pid" || true
    ep_pid=""
done
{
    echo "# Slurm provider on a 4-node Slurm cluster on this machine"
    echo
    echo "Real slurmctld and slurmd daemons (Debian's slurm-wlm), one host, 2 worker processes per node; pilots launched by srun --mpi=pmi2 as MPI ranks."
    echo
    echo "| nodes per block | fxr endpoint start → first result (s) | no-op tasks/s (100,000 tasks) |"
    echo "|---|---|---|"
    tail -n +2 "$out/raw.csv" | while IFS=, read -r n f t r; do echo "| $n | $f | $r |"; done
} > "$out/summary.md"
printf '# Setup\n\n- machine: %s cores, %s\n- commit: %s\n- date: %s\n- command: scripts/slurm-figures.sh\n' \
    "$(nproc)" "$(head -1 /proc/meminfo)" "$(git rev-parse HEAD)" "$(date -u)" > "$out/SETUP.md"
cat "$out/summary.md"
