#!/usr/bin/env bash
# What metrics and tracing cost on the exec shape (docs/PERFORMANCE.md,
# "Observability (issue 26)"): the throughput example of a parent commit
# against this one with nothing on, with `--metrics`, and with
# `--otel-sample 0`, in rounds whose order rotates (each variant takes each
# position in turn), then the median of the per-round ratios to the parent.
#
#   bash benches/observability_cost.sh PARENT_THROUGHPUT THIS_THROUGHPUT memory|sqlite EVENTS ROUNDS
#
# Both binaries: `cargo build --release --all-features --example throughput`
# (the parent's in a worktree of its own, with a target directory of its own).
set -euo pipefail
parent=$1; this=$2; backend=$3; events=$4; rounds=$5
common=(--backend "$backend" --scenario exec --events "$events" --no-baseline)
[ "$backend" = sqlite ] && common+=(--durability normal)
variants=(parent off metrics otel0)
results=$(mktemp)
for r in $(seq 1 "$rounds"); do
  for i in 0 1 2 3; do
    v=${variants[$(( (i + r) % 4 ))]}
    case $v in
      parent) out=$("$parent" "${common[@]}") ;;
      off) out=$("$this" "${common[@]}") ;;
      metrics) out=$("$this" "${common[@]}" --metrics) ;;
      otel0) out=$("$this" "${common[@]}" --otel-sample 0) ;;
    esac
    rate=$(echo "$out" | grep -o '= [0-9]* executions/s' | head -n 1 | grep -o '[0-9]*')
    echo "$r $v $rate" | tee -a "$results"
  done
done
python3 - "$results" <<'PY'
import collections, statistics, sys
rounds = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, v, rate = line.split()
    rounds[r][v] = float(rate)
for v in ("off", "metrics", "otel0"):
    ratios = [rounds[r][v] / rounds[r]["parent"] for r in rounds]
    print(f"{v:8} / parent: median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} rounds)")
for v in ("parent", "off", "metrics", "otel0"):
    print(f"{v:8} median {statistics.median(rounds[r][v] for r in rounds):,.0f} executions/s")
PY
