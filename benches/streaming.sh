#!/usr/bin/env bash
# Streaming through the proxy: STREAMS concurrent server-sent-event streams at 50 events/s each
# (switchyard's built-in replica, one token per event), through nginx (proxy_buffering off)
# and through switchyard, in interleaved rounds. Reports each proxy's CPU seconds per 1,000
# events, the inter-event gap percentiles the client saw, and the ratio. Loopback only; every
# process stops on exit. See benches/README.md.
#
#   bash benches/streaming.sh
#   STREAMS=200 SECONDS_LOAD=5 ROUNDS=1 bash benches/streaming.sh   # a quick look
set -euo pipefail

STREAMS=${STREAMS:-1000}         # concurrent streams (loadtest --concurrency)
RATE=${RATE:-50}                 # events per second per stream (replica --tokens-per-second)
TOKENS=${TOKENS:-50}             # events per stream (max_tokens): 1 s per stream at 50/s
SECONDS_LOAD=${SECONDS_LOAD:-10} # seconds of CPU measurement per run, after the streams ramp up
ROUNDS=${ROUNDS:-3}              # interleaved rounds (nginx, switchyard)
WORKERS=${WORKERS:-2}            # switchyard --workers and nginx worker_processes
PORT_BASE=${PORT_BASE:-18500}    # ports PORT_BASE+1 .. PORT_BASE+4 on 127.0.0.1
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
for v in STREAMS RATE TOKENS SECONDS_LOAD ROUNDS WORKERS PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} >= 1)) || { echo "streaming: $v=${!v} is not a positive whole number" >&2; exit 2; }
done

P_REPLICA=$((PORT_BASE + 1)); P_NGINX=$((PORT_BASE + 2)); P_SY=$((PORT_BASE + 3)); P_ADMIN=$((PORT_BASE + 4))
LOG_TAG=streaming
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

stop_everything_on_exit

ensure_tools
build_switchyard
BIN=${SWITCHYARD_BIN:-$PWD/target/release/switchyard}
# Each stream is a client socket and an upstream socket in the proxy, and one of each in the
# load generator and the replica.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
((STREAMS * 2 + 1000 <= $(ulimit -n))) || die "open-file limit $(ulimit -n) is too low for STREAMS=$STREAMS"

WORK=$(mktemp -d /tmp/switchyard-streaming.XXXXXX)
for p in $P_REPLICA $P_NGINX $P_SY $P_ADMIN; do
    port_free "$p" || die "port 127.0.0.1:$p is in use; pick another PORT_BASE"
done

RUST_LOG=warn "$BIN" replica --host 127.0.0.1 --port "$P_REPLICA" --tokens-per-second "$RATE" --latency-ms 0 \
    >"$WORK/replica.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_REPLICA/healthz" 10 "$!" ||
    die "replica did not answer: $(tail -3 "$WORK/replica.log")"

mkdir -p "$WORK/tmp"
cat >"$WORK/proxy.conf" <<EOF
$(nginx_proxy_head "$WORKERS" 16384 "worker_rlimit_nofile 65536;")
    upstream replica {
        server 127.0.0.1:$P_REPLICA;
        keepalive 2048;
        keepalive_requests 100000;
    }
    server {
        listen 127.0.0.1:$P_NGINX backlog=4096;
        location / {
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 60s;
        }
    }
}
EOF
nginx -t -q -p "$WORK" -e "$WORK/proxy-error.log" -c "$WORK/proxy.conf" || die "nginx config test failed"
nginx -p "$WORK" -e "$WORK/proxy-error.log" -c "$WORK/proxy.conf" >>"$WORK/proxy-error.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")

RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$P_SY" --admin-listen "127.0.0.1:$P_ADMIN" \
    --upstream "v1=127.0.0.1:$P_REPLICA" --workers "$WORKERS" --shutdown-grace-seconds 1 --ephemeral \
    >"$WORK/switchyard.log" 2>&1 &
SY_PID=$!
PIDS+=("$SY_PID")
wait_http "http://127.0.0.1:$P_ADMIN/readyz" 15 "$SY_PID" || die "switchyard not ready: $(tail -5 "$WORK/switchyard.log")"


# One run: the load generator keeps STREAMS streams open (each client starts its next stream
# when one ends) through a RAMP-second warm-up and SECONDS_LOAD measured seconds; the proxy's
# CPU is read across the measured seconds, and the events are the tokens the client counted
# in them (streams that end in the window; those ending after it balance those begun before).
RAMP=3
declare -A CPU1K GAP50 GAP99 EVS BROKEN
run() { # TARGET URL PID ROUND
    local t=$1 url=$2 pid=$3 r=$4 json="$WORK/$1-$4.json" c0 c1
    timeout $((RAMP + SECONDS_LOAD + 60)) "$BIN" loadtest "$url" --concurrency "$STREAMS" --stream true \
        --max-tokens "$TOKENS" --prompt-words 8 --max-in-flight "$STREAMS" --warmup "$RAMP" --duration "$SECONDS_LOAD" --timeout 60 \
        --json "$json" --quiet >"$WORK/$t-$r.txt" 2>&1 &
    WRK_PID=$!
    sleep "$RAMP"
    c0=$(cpu_ticks "$pid")
    sleep "$SECONDS_LOAD"
    c1=$(cpu_ticks "$pid")
    wait "$WRK_PID" || { WRK_PID=""; cat "$WORK/$t-$r.txt" >&2; die "loadtest through $t failed"; }
    WRK_PID=""
    read -r rate p50 p99 broken errors < <(python3 -c '
import json, sys
o = json.load(open(sys.argv[1]))["summary"]["overall"]
print(o["output_tokens"], o["itl_ms"]["p50"], o["itl_ms"]["p99"], o["broken_streams"], o["errors"])' "$json") ||
        die "cannot read $json"
    EVS[$t/$r]=$rate
    rate=$(awk -v e="$rate" -v s="$SECONDS_LOAD" 'BEGIN { print e / s }')
    CPU1K[$t/$r]=$(awk -v d="$((c1 - c0))" -v hz="$CLK_TCK" -v e="${EVS[$t/$r]}" 'BEGIN { printf "%.4f", (e > 0 ? d / hz / (e / 1000) : 0) }')
    GAP50[$t/$r]=$p50; GAP99[$t/$r]=$p99; BROKEN[$t/$r]="$broken/$errors"
    printf 'round %d  %-10s  %8.0f events/s  cpu %6.2f s over %ds  = %.4f cpu s per 1,000 events  gap p50 %5.1f ms p99 %5.1f ms  broken/errors %s\n' \
        "$r" "$t" "$rate" "$(awk -v d="$((c1 - c0))" -v hz="$CLK_TCK" 'BEGIN { print d / hz }')" "$SECONDS_LOAD" \
        "${CPU1K[$t/$r]}" "$p50" "$p99" "${BROKEN[$t/$r]}"
    kill -0 "$SY_PID" 2>/dev/null || die "switchyard exited during the run: $(tail -5 "$WORK/switchyard.log")"
}

log "$STREAMS streams x $RATE events/s, $TOKENS events each; $ROUNDS rounds; proxies with $WORKERS workers"
for ((r = 1; r <= ROUNDS; r++)); do
    run nginx "http://127.0.0.1:$P_NGINX" "$NGINX_PID" "$r"
    run switchyard "http://127.0.0.1:$P_SY" "$SY_PID" "$r"
done

echo
echo "== streaming: $STREAMS concurrent SSE streams at $RATE events/s each, medians of $ROUNDS rounds =="
printf '%-12s %14s %22s %12s %12s\n' target "events/s" "cpu s / 1,000 events" "gap p50 ms" "gap p99 ms"
declare -A MED
for t in nginx switchyard; do
    es=() cs=() g5=() g9=()
    for ((r = 1; r <= ROUNDS; r++)); do
        es+=("$(awk -v e="${EVS[$t/$r]}" -v s="$SECONDS_LOAD" 'BEGIN { print e / s }')"); cs+=("${CPU1K[$t/$r]}")
        g5+=("${GAP50[$t/$r]}"); g9+=("${GAP99[$t/$r]}")
    done
    MED[$t]=$(median "${cs[@]}")
    printf '%-12s %14.0f %22.4f %12.1f %12.1f\n' "$t" "$(median "${es[@]}")" "${MED[$t]}" "$(median "${g5[@]}")" "$(median "${g9[@]}")"
done
printf 'switchyard/nginx cpu per 1,000 events: %s (want <= 1.0)\n' \
    "$(awk -v a="${MED[switchyard]}" -v b="${MED[nginx]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')"
