#!/usr/bin/env bash
# Do open dashboards cost the data plane anything? wrk through switchyard to a built-in replica,
# in interleaved rounds without and with CLIENTS dashboards open on the admin listener (each an
# event stream held open plus the page's polling: benches/dashboard_clients.py). Reports
# requests/s and p99 per round, the medians and their ratios, and the spread between baseline
# rounds, which is the noise to compare with. Everything runs on 127.0.0.1 and stops by itself.
#
#   bash benches/dashboard_sse.sh                          # 5 rounds of 10 s each way
#   DURATION=3 ROUNDS=2 SKIP_BUILD=1 bash benches/dashboard_sse.sh
#   BIN=target/debug/switchyard bash benches/dashboard_sse.sh
set -euo pipefail

DURATION=${DURATION:-10}        # seconds per measured wrk run
ROUNDS=${ROUNDS:-5}
CLIENTS=${CLIENTS:-50}          # dashboards open in the loaded runs
CONNECTIONS=${CONNECTIONS:-32}  # wrk -c
THREADS=${THREADS:-2}           # wrk -t
WORKERS=${WORKERS:-1}           # switchyard --workers (1 leaves a core to wrk and the replica)
PORT_BASE=${PORT_BASE:-18200}   # ports PORT_BASE+1 .. +3 on 127.0.0.1
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
BIN=${BIN:-}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG=dashboard
# shellcheck source=benches/common.sh
source benches/common.sh

for v in DURATION ROUNDS CLIENTS CONNECTIONS THREADS WORKERS PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v=${!v} is not a whole number"
done
command -v wrk >/dev/null || die "needs wrk (apt-get install wrk)"
command -v python3 >/dev/null || die "needs python3"
if [[ -z $BIN ]]; then
    build_switchyard
    BIN=target/release/switchyard
fi
[[ -x $BIN ]] || die "no switchyard binary at $BIN"

P_UP=$((PORT_BASE + 1)) P_SY=$((PORT_BASE + 2)) P_ADMIN=$((PORT_BASE + 3))
for p in $P_UP $P_SY $P_ADMIN; do port_free "$p" || die "port $p is busy (set PORT_BASE)"; done
KEY="bench-dashboard-$$-$RANDOM"
WORK=$(mktemp -d)
PIDS=()
CLIENTS_PID=""
trap 'stop_all ${CLIENTS_PID:+"$CLIENTS_PID"} "${PIDS[@]}"' EXIT
trap 'exit 130' INT TERM

# A fast upstream: 1 token, no think time, so the proxy's own cost is what wrk sees.
"$BIN" replica --port "$P_UP" --latency-ms 0 --tokens 1 --tokens-per-second 100000 \
    >"$WORK/replica.log" 2>&1 &
PIDS+=($!)
"$BIN" serve --listen "127.0.0.1:$P_SY" --admin-listen "127.0.0.1:$P_ADMIN" --workers "$WORKERS" \
    --upstream "v1=127.0.0.1:$P_UP" --api-key "$KEY" --ephemeral >"$WORK/switchyard.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_UP/healthz" 10 || die "the replica did not start"
wait_http "http://127.0.0.1:$P_ADMIN/readyz" 10 "${PIDS[-1]}" || die "switchyard did not start"
wait_http "http://127.0.0.1:$P_SY/healthz" 10 || die "switchyard does not reach the replica"

# The replica's /predict is POST only.
printf 'wrk.method = "POST"\nwrk.body = "{}"\nwrk.headers["Content-Type"] = "application/json"\n' >"$WORK/post.lua"

# CPU seconds (user + system) a process, or one of its threads, has used so far.
cpu_seconds() { # STATFILE
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "$1"
}
admin_stat() { # the admin listener's thread of switchyard (PID ${PIDS[1]})
    grep -l '^switchyard-admi' /proc/"${PIDS[1]}"/task/*/comm | head -1 | sed 's/comm$/stat/'
}

measure() { # LABEL ROUND: one wrk run; appends "label round rps p99_ms admin_cpu_s" to $WORK/results
    local out rps p99 stat a0 a1 admin_cpu
    stat=$(admin_stat)
    a0=$(cpu_seconds "$stat")
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$P_SY/predict")
    a1=$(cpu_seconds "$stat")
    admin_cpu=$(awk -v a="$a0" -v b="$a1" 'BEGIN { printf "%.2f", b - a }')
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/, "", v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v*=1000}; print v}' <<<"$out")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then log "$1 round $2: $(grep -E 'Non-2xx|Socket errors' <<<"$out")"; fi
    printf '%s %s %s %s %s\n' "$1" "$2" "$rps" "$p99" "$admin_cpu" >>"$WORK/results"
    log "$1 round $2: $rps req/s, p99 $p99 ms, admin thread ${admin_cpu} CPU s"
}

start_clients() {
    python3 benches/dashboard_clients.py --admin "127.0.0.1:$P_ADMIN" --key "$KEY" \
        --clients "$CLIENTS" >"$WORK/clients.out" 2>&1 &
    CLIENTS_PID=$!
    sleep 3 # every stream open and the polling under way
    CLIENTS_CPU0=$(cpu_seconds "/proc/$CLIENTS_PID/stat")
}

stop_clients() {
    log "the dashboard clients themselves used $(awk -v a="$CLIENTS_CPU0" -v b="$(cpu_seconds "/proc/$CLIENTS_PID/stat")" 'BEGIN { printf "%.2f", b - a }') CPU s meanwhile (on the same cores)"
    kill -TERM "$CLIENTS_PID" 2>/dev/null || true
    wait "$CLIENTS_PID" 2>/dev/null || true
    CLIENTS_PID=""
    log "dashboards: $(tail -1 "$WORK/clients.out")"
    grep -q " errors=0" "$WORK/clients.out" || log "WARNING: dashboard clients saw errors"
}

log "warm-up"
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WORK/post.lua" "http://127.0.0.1:$P_SY/predict" >/dev/null
for r in $(seq "$ROUNDS"); do
    # Alternate the order so that drift (thermal, other load) hits both sides alike.
    if ((r % 2)); then
        measure baseline "$r"
        start_clients; measure dashboards "$r"; stop_clients
    else
        start_clients; measure dashboards "$r"; stop_clients
        measure baseline "$r"
    fi
done

python3 - "$WORK/results" "$CLIENTS" "$DURATION" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def col(label, i):
    return [float(r[i]) for r in rows if r[0] == label]
med = statistics.median
b_rps, d_rps = col("baseline", 2), col("dashboards", 2)
b_p99, d_p99 = col("baseline", 3), col("dashboards", 3)
b_cpu, d_cpu = col("baseline", 4), col("dashboards", 4)
secs = float(sys.argv[3])
print(f"\n{'':16}{'req/s (median)':>16}{'p99 ms (median)':>17}{'admin thread CPU':>18}")
print(f"{'baseline':16}{med(b_rps):>16.0f}{med(b_p99):>17.2f}{med(b_cpu) / secs:>17.1%}")
print(f"{sys.argv[2] + ' dashboards':16}{med(d_rps):>16.0f}{med(d_p99):>17.2f}{med(d_cpu) / secs:>17.1%}")
print(f"ratio with/without: req/s {med(d_rps) / med(b_rps):.3f}, p99 {med(d_p99) / med(b_p99):.3f}")
print(f"baseline rounds: req/s {min(b_rps):.0f}-{max(b_rps):.0f}, p99 {min(b_p99):.2f}-{max(b_p99):.2f} ms")
within = min(b_rps) <= med(d_rps) and med(d_p99) <= max(b_p99)
print("within noise (the medians with dashboards fall inside the baseline rounds' range)" if within
      else "BEYOND NOISE (a median with dashboards is outside the baseline rounds' range)")
EOF
