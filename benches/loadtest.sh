#!/usr/bin/env bash
# Generator efficiency: `switchyard loadtest` in closed-loop GET mode against wrk, same
# connections, same nginx target serving a small body on 127.0.0.1, interleaved rounds.
# The load generator must not be the bottleneck of a rollout test on a 2-core box.
#
#   bash benches/loadtest.sh                      # 3 rounds of 10 s each
#   DURATION=3 ROUNDS=1 bash benches/loadtest.sh  # a quick look
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}           # wrk -t; switchyard loadtest uses one runtime thread per core
PORT_BASE=${PORT_BASE:-18200}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
MIN_RATIO=${MIN_RATIO:-0.7}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
P_V1=$((PORT_BASE + 1))
P_V2=$((PORT_BASE + 2))
LOG_TAG=loadtest
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

stop_everything_on_exit

ensure_tools
build_switchyard
BIN=$PWD/target/release/switchyard
WORK=$(mktemp -d /tmp/switchyard-loadtest.XXXXXX)
for p in $P_V1 $P_V2; do port_free "$p" || die "port 127.0.0.1:$p is in use; pick another PORT_BASE"; done
write_upstream_conf 4096
nginx -t -q -p "$WORK" -e "$WORK/upstream-error.log" -c "$WORK/upstream.conf" || die "nginx config test failed"
nginx -p "$WORK" -e "$WORK/upstream-error.log" -c "$WORK/upstream.conf" >>"$WORK/upstream-error.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_V1/" 10 "$!" || die "nginx did not answer"
URL="http://127.0.0.1:$P_V1/"
log "$ROUNDS rounds of ${DURATION}s, $CONNECTIONS connections: wrk -t$THREADS vs switchyard loadtest --concurrency $CONNECTIONS --get"


WRK=() SY=()
for ((r = 1; r <= ROUNDS; r++)); do
    timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" "$URL" >"$WORK/wrk-$r.txt" 2>&1 ||
        { cat "$WORK/wrk-$r.txt" >&2; die "wrk failed"; }
    w=$(awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk-$r.txt")
    timeout $((DURATION + 60)) "$BIN" loadtest "$URL" --get --concurrency "$CONNECTIONS" --max-in-flight "$CONNECTIONS" \
        --duration "$DURATION" --warmup 1 --quiet --json "$WORK/sy-$r.json" >"$WORK/sy-$r.txt" 2>&1 ||
        { cat "$WORK/sy-$r.txt" >&2; die "switchyard loadtest failed"; }
    s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["summary"]["overall"]["requests_per_s"])' "$WORK/sy-$r.json" 2>/dev/null ||
        awk '$1 == "all" { print $3 }' "$WORK/sy-$r.txt")
    errors=$(awk '$1 == "all" { print $4 }' "$WORK/sy-$r.txt")
    printf 'round %d  wrk %10.0f req/s   switchyard loadtest %10.0f req/s   ratio %.3f   (loadtest errors %s)\n' \
        "$r" "$w" "$s" "$(awk -v a="$s" -v b="$w" 'BEGIN { print (b > 0 ? a / b : 0) }')" "$errors"
    WRK+=("$w"); SY+=("$s")
done
mw=$(median "${WRK[@]}"); ms=$(median "${SY[@]}")
ratio=$(awk -v a="$ms" -v b="$mw" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
echo
echo "== median of $ROUNDS rounds: wrk $mw req/s, switchyard loadtest $ms req/s, ratio $ratio (want >= $MIN_RATIO)"
awk -v r="$ratio" -v m="$MIN_RATIO" 'BEGIN { exit !(r >= m) }' && echo "PASS" || { echo "FAIL"; exit 1; }
