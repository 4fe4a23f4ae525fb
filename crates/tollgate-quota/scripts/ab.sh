#!/usr/bin/env bash
# One quick measurement of a tollgate-quota binary, laid out as `make bench` lays out its
# quota rows: the service on core 0, redis-server and `wrk -c50` on core 1, POST /v1/check
# with the benchmark's two limits over 10k metered keys. Prints decisions/s, p50/p99 and
# CPU per decision of the service and of Redis (from /proc), and how many EVALSHA calls
# Redis ran (fewer than decisions when checks are batched).
#
# Run two binaries in turn, several times, to compare them on the same (noisy) machine:
#   for i in 1 2 3; do scripts/ab.sh /tmp/before 5; scripts/ab.sh /tmp/after 5; done
#
# usage: ab.sh <tollgate-quota binary> [seconds=6] [redis|memory]
set -u
bin=$1; secs=${2:-6}; store=${3:-redis}
root=$(cd "$(dirname "$0")/../../.." && pwd)
rport=$((17000 + RANDOM % 1000)); qport=$((18100 + RANDOM % 800))
ticks=$(getconf CLK_TCK)
cpu() { awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
limits='[{"name":"rpm","limit":1000000000,"window_secs":60,"burst":1000000000},{"name":"per-day","algorithm":"fixed_window","limit":1000000000,"window_secs":86400}]'
load() { taskset -c 1 wrk -t1 -c50 -d"$1"s --timeout 5s -s "$root/bench/lua/requests.lua" \
  "http://127.0.0.1:$qport/v1/check" -- check 10000 /v1/check "$limits" "$token"; }
token=ab-sh-service-token-0123456789

rpid=""
location=memory
if [[ $store == redis ]]; then
  taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
  rpid=$!
  location=redis://127.0.0.1:$rport/0
  for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
taskset -c 0 "$bin" --listen "127.0.0.1:$qport" --store "$location" --service-token "$token" >/dev/null 2>&1 &
qpid=$!
trap 'kill $qpid $rpid 2>/dev/null' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "localhost:$qport/healthz" && break; sleep 0.1; done

load 2 >/dev/null # warm-up
q0=$(cpu $qpid); r0=0; [[ -n $rpid ]] && r0=$(cpu $rpid)
result=$(load "$secs" | grep BENCH_RESULT)
q1=$(cpu $qpid); r1=0; [[ -n $rpid ]] && r1=$(cpu $rpid)
calls=""
[[ -n $rpid ]] && calls=$(redis-cli -p "$rport" info commandstats | grep -o 'cmdstat_evalsha:calls=[0-9]*' | cut -d: -f2)

python3 - "$result" "$q0" "$q1" "$r0" "$r1" "$calls" "$bin" <<'PY'
import sys
result, q0, q1, r0, r1, calls, binary = sys.argv[1:8]
d = dict(kv.split("=") for kv in result.split()[1:])
n = int(d["requests"])
errors = sum(int(d[k]) for k in ("connect", "read", "write", "status", "timeout"))
print(f"{binary}: {n / (int(d['duration_us']) / 1e6):.0f} decisions/s, p50 {int(d['p50_us']) / 1000:.2f} ms, "
      f"p99 {int(d['p99_us']) / 1000:.2f} ms, service {(float(q1) - float(q0)) * 1e6 / n:.1f} µs/decision, "
      f"Redis {(float(r1) - float(r0)) * 1e6 / n:.1f} µs/decision, errors {errors}" + (f", EVALSHA {calls}" if calls else ""))
PY
