#!/usr/bin/env bash
# User-space instructions per proxied request, switchyard against nginx, counted by valgrind's
# callgrind: a figure that does not move with the load on a shared machine, unlike CPU time.
# Both proxies run one worker under callgrind in front of the same nginx upstream (90/10 split);
# counters are zeroed after a warm-up and dumped after a fixed load, and the instructions
# between are divided by the requests served. Kernel work is not counted: both make the same
# system calls per request (see benches/README.md), so this is where the two differ.
#
#   bash benches/instructions.sh
#   SECONDS_LOAD=4 CONNECTIONS=8 bash benches/instructions.sh
set -euo pipefail

SECONDS_LOAD=${SECONDS_LOAD:-8}  # seconds of measured load per proxy (wrk -t1)
CONNECTIONS=${CONNECTIONS:-16}   # wrk -c
PORT_BASE=${PORT_BASE:-18400}    # ports PORT_BASE+1 .. PORT_BASE+5 on 127.0.0.1
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
SWITCHYARD_BIN=${SWITCHYARD_BIN:-}  # another build to count instead of target/release/switchyard

cd "$(dirname "${BASH_SOURCE[0]}")/.."
for v in SECONDS_LOAD CONNECTIONS PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "instructions: $v=${!v} is not a whole number" >&2; exit 2; }
done

P_V1=$((PORT_BASE + 1)); P_V2=$((PORT_BASE + 2)); P_NGINX=$((PORT_BASE + 3))
P_SY=$((PORT_BASE + 4)); P_ADMIN=$((PORT_BASE + 5))
LOG_TAG=instructions
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

stop_everything_on_exit

ensure_tools
ensure_valgrind
build_switchyard
BIN=${SWITCHYARD_BIN:-$PWD/target/release/switchyard}
WORK=$(mktemp -d /tmp/switchyard-instr.XXXXXX)
start_upstream 4096 $P_V1 $P_V2 $P_NGINX $P_SY $P_ADMIN

# One nginx process, no master: callgrind then follows the process that serves.
cat >"$WORK/proxy.conf" <<EOF
$(nginx_proxy_head 1 1024 "master_process off;")
$(nginx_backends)
    server {
        listen 127.0.0.1:$P_NGINX backlog=4096;
$(nginx_proxy_location)
    }
}
EOF

count() { # NAME URL READY_URL -- COMMAND...: writes "instructions requests" to $WORK/NAME.result
    local name=$1 url=$2 ready=$3
    shift 4
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.%p.out" "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_http "$ready" 60 "$pid" || die "$name did not answer under valgrind: $(tail -5 "$WORK/$name.log")"
    timeout 60 wrk -t1 -c"$CONNECTIONS" -d3s "$url" >/dev/null || die "$name: warm-up failed"
    callgrind_control -z "$pid" >/dev/null 2>&1 || die "callgrind_control -z $pid failed"
    timeout $((SECONDS_LOAD + 60)) wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_LOAD}s" "$url" >"$WORK/$name.wrk" 2>&1 ||
        die "$name: wrk failed: $(cat "$WORK/$name.wrk")"
    callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control -d $pid failed"
    local reqs ir
    reqs=$(awk '/ requests in / { print $1 }' "$WORK/$name.wrk")
    grep -q 'Non-2xx\|Socket errors' "$WORK/$name.wrk" && log "$name: $(grep 'Non-2xx\|Socket errors' "$WORK/$name.wrk")"
    # The dump after the zeroing: the file with the highest part number holds the measured part.
    ir=$(cat "$WORK/$name.$pid.out."* 2>/dev/null | awk '/^summary:/ { s = $2 } END { print s + 0 }')
    [[ -n $reqs && $ir -gt 0 ]] || die "$name: no count (requests '$reqs', instructions '$ir')"
    kill -TERM "$pid" 2>/dev/null || true
    echo "$ir $reqs" >"$WORK/$name.result"
}

# (valgrind runs the program itself: a wrapper such as env would leave the real one uncounted.)
export RUST_LOG=warn
count switchyard "http://127.0.0.1:$P_SY/" "http://127.0.0.1:$P_ADMIN/readyz" -- "$BIN" serve --listen "127.0.0.1:$P_SY" --admin-listen "127.0.0.1:$P_ADMIN" \
    --upstream "v1=127.0.0.1:$P_V1" --upstream "v2=127.0.0.1:$P_V2" --weight v1=90 --weight v2=10 \
    --workers 1 --shutdown-grace-seconds 1 --ephemeral
count nginx "http://127.0.0.1:$P_NGINX/" "http://127.0.0.1:$P_NGINX/" -- \
    nginx -p "$WORK" -e "$WORK/proxy-error.log" -c "$WORK/proxy.conf"
read -r sy_ir sy_n <"$WORK/switchyard.result"
read -r ng_ir ng_n <"$WORK/nginx.result"

echo
echo "== user-space instructions per proxied request (callgrind, wrk -t1 -c$CONNECTIONS, ${SECONDS_LOAD}s each) =="
awk -v si="$sy_ir" -v sn="$sy_n" -v ni="$ng_ir" -v nn="$ng_n" 'BEGIN {
    printf "switchyard  %10d instructions / %7d requests = %8.0f per request\n", si, sn, si / sn
    printf "nginx       %10d instructions / %7d requests = %8.0f per request\n", ni, nn, ni / nn
    printf "switchyard/nginx: %.3f\n", (si / sn) / (ni / nn)
}'
