#!/bin/bash
# A/B alternation: per round, every variant once, same window. Variants:
#   off     new tree, --rate-limit ''                                   (no limiter)
#   old     main's tree (limits library, SlidingWindowCounter in Redis), --rate-limit 1000000/second
#   lua     new tree, GKD_RATE_LIMIT_LEASE=0 (one Lua round trip per request)
#   lease5  new tree, GKD_RATE_LIMIT_LEASE=0.000005 (leases of 5 hits: the default 100/second's lease size)
#   lease   new tree, default GKD_RATE_LIMIT_LEASE=0.05 (leases of 50,000 hits at 1000000/second)
set -u
NEW=/work/wt/ratelimit OLD=/tmp/rl-old OUT=/work/wt/ratelimit/var/bench/rl2
mkdir -p $OUT
ARGS="--workers 2 --streams 20 --duration 5 --warmup 1 --rounds 1"
run() { # name tree lease rate
  local name=$1 tree=$2 lease=$3 rate=$4 round=$5
  (cd $tree && env PYTHONPATH=$tree HF_HUB_OFFLINE=1 ${lease:+GKD_RATE_LIMIT_LEASE=$lease} timeout 300 \
     /work/main/.venv/bin/python -m benchmarks.api $ARGS --rate-limit "$rate" --out $OUT/api_rl_${name}.r$round.json \
     > $OUT/api_rl_${name}.r$round.log 2>&1)
  echo "round $round $name rc=$? $(cat /proc/loadavg)"
}
for round in 1 2 3; do
  run off $NEW "" "" $round
  run old $OLD "" 1000000/second $round
  run lua $NEW 0 1000000/second $round
  run lease5 $NEW 0.000005 1000000/second $round
  run lease $NEW "" 1000000/second $round
done
