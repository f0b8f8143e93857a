#!/usr/bin/env bash
# System calls, TCP segments and context switches per proxied request, switchyard against
# nginx, counted by the kernel (perf's software tracepoints and nstat), not timed: figures that
# hold steady on a shared machine. The kernel does most of a proxy's work on loopback (about
# three quarters of its CPU time), so a write or a segment more per request shows here first.
# Both proxies run WORKERS workers in front of the same nginx upstream (90/10 split); each
# round runs wrk -t2 against each in turn while perf counts the proxy's own threads.
#
#   bash benches/syscalls.sh                 # GET, 64 connections, 2 rounds
#   METHOD=POST bash benches/syscalls.sh     # a 130-byte JSON body on every request
#   CONNECTIONS=8 ROUNDS=3 bash benches/syscalls.sh
#   SCHEME=https bash benches/syscalls.sh    # clients over TLS (rustls against OpenSSL)
#
# Needs perf (linux-perf) with tracepoints readable (run as root) and nstat (iproute2).
# The upstream sends each response as two segments (head, then the file by sendfile), as many
# servers do; the proxies' requests and answers are the other four data segments of a request.
set -euo pipefail

DURATION=${DURATION:-6}         # seconds of counted load per proxy per round
CONNECTIONS=${CONNECTIONS:-64}  # wrk -c
ROUNDS=${ROUNDS:-2}
WORKERS=${WORKERS:-2}
METHOD=${METHOD:-GET}           # GET or POST
SCHEME=${SCHEME:-http}          # http, or https: both proxies terminate TLS with one P-256 certificate
PORT_BASE=${PORT_BASE:-18500}   # ports PORT_BASE+1 .. PORT_BASE+5 on 127.0.0.1
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
SWITCHYARD_BIN=${SWITCHYARD_BIN:-}  # another build to count instead of target/release/switchyard

cd "$(dirname "${BASH_SOURCE[0]}")/.."
for v in DURATION CONNECTIONS ROUNDS WORKERS PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} > 0)) || { echo "syscalls: $v=${!v} is not a positive whole number" >&2; exit 2; }
done
[[ $METHOD == GET || $METHOD == POST ]] || { echo "syscalls: METHOD=$METHOD: use GET or POST" >&2; exit 2; }
[[ $SCHEME == http || $SCHEME == https ]] || { echo "syscalls: SCHEME=$SCHEME: use http or https" >&2; exit 2; }

P_V1=$((PORT_BASE + 1)); P_V2=$((PORT_BASE + 2)); P_NGINX=$((PORT_BASE + 3))
P_SY=$((PORT_BASE + 4)); P_ADMIN=$((PORT_BASE + 5))
LOG_TAG=syscalls
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

stop_everything_on_exit
ensure_tools
command -v perf >/dev/null || die "perf is missing (Debian: apt-get install linux-perf)"
command -v nstat >/dev/null || die "nstat is missing (Debian: apt-get install iproute2)"
perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 ||
    die "perf cannot read syscall tracepoints here (run as root, or lower kernel.perf_event_paranoid)"
build_switchyard
BIN=${SWITCHYARD_BIN:-$PWD/target/release/switchyard}
WORK=$(mktemp -d /tmp/switchyard-syscalls.XXXXXX)
setup_scheme

start_upstream 4096 $P_V1 $P_V2 $P_NGINX $P_SY $P_ADMIN
if [[ $METHOD == POST ]]; then
    # The upstream answers a POST to a static file with 405 and a small page: the same
    # answer through both proxies, which is all the count needs.
    write_post_script "$WORK/post.lua"
    WRK_SCRIPT=(-s "$WORK/post.lua")
else
    WRK_SCRIPT=()
fi
cat >"$WORK/proxy.conf" <<EOF
$(nginx_proxy_head "$WORKERS" 4096)
$(nginx_backends)
    server {
        listen 127.0.0.1:$P_NGINX backlog=4096$LISTEN_SSL;
$(nginx_proxy_location)
    }
}
EOF
nginx -p "$WORK" -e "$WORK/proxy-error.log" -c "$WORK/proxy.conf" >>"$WORK/proxy-error.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$P_SY" --admin-listen "127.0.0.1:$P_ADMIN" \
    --upstream "v1=127.0.0.1:$P_V1" --upstream "v2=127.0.0.1:$P_V2" --weight v1=90 --weight v2=10 \
    "${TLS_ARGS[@]}" --workers "$WORKERS" --shutdown-grace-seconds 1 --ephemeral >"$WORK/switchyard.log" 2>&1 &
SY_PID=$!
PIDS+=($SY_PID)
wait_http "$SCHEME://127.0.0.1:$P_NGINX/" 10 || die "nginx proxy did not answer: $(tail -3 "$WORK/proxy-error.log")"
wait_http "http://127.0.0.1:$P_ADMIN/readyz" 10 "$SY_PID" || die "switchyard did not answer: $(tail -3 "$WORK/switchyard.log")"

# Every call that moves socket bytes counts as a read or a write: nginx reads a response body
# that comes after its head with readv (its buffering pipe), which recvfrom and read alone miss.
READS=syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_readv,syscalls:sys_enter_recvmsg
WRITES=syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendmsg
EVENTS=raw_syscalls:sys_enter,$READS,$WRITES,syscalls:sys_enter_epoll_wait,context-switches
ticks() { # PID,PID...: user and system clock ticks of those processes
    local p u=0 s=0 a b
    for p in ${1//,/ }; do
        read -r a b < <(awk '{ print $14, $15 }' "/proc/$p/stat")
        u=$((u + a)); s=$((s + b))
    done
    echo "$u $s"
}
switches() { # PID,PID...: context switches of those processes so far, voluntary and not
    local p n=0
    for p in ${1//,/ }; do
        n=$((n + $(awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { print s }' "/proc/$p/status")))
    done
    echo "$n"
}

measure() { # NAME PORT PIDS: one counted wrk run, one line of figures per request
    local name=$1 port=$2 pids=$3 u0 s0 u1 s1 up_u0 up_s0 up_u1 up_s1 up_sw0 up_sw1 reqs
    timeout 60 wrk "${WRK_SCRIPT[@]}" -t2 -c"$CONNECTIONS" -d2s "$SCHEME://127.0.0.1:$port/" >/dev/null ||
        die "$name: warm-up failed"
    read -r u0 s0 < <(ticks "$pids")
    read -r up_u0 up_s0 < <(ticks "$UPSTREAM_PIDS")
    up_sw0=$(switches "$UPSTREAM_PIDS")
    nstat -n >/dev/null
    timeout $((DURATION + 60)) perf stat -x, -e "$EVENTS" -p "$pids" -- \
        wrk "${WRK_SCRIPT[@]}" -t2 -c"$CONNECTIONS" -d"${DURATION}s" "$SCHEME://127.0.0.1:$port/" \
        >"$WORK/$name.wrk" 2>"$WORK/$name.perf" || die "$name: perf/wrk failed: $(tail -3 "$WORK/$name.perf")"
    nstat >"$WORK/$name.nstat"
    read -r u1 s1 < <(ticks "$pids")
    read -r up_u1 up_s1 < <(ticks "$UPSTREAM_PIDS")
    up_sw1=$(switches "$UPSTREAM_PIDS")
    reqs=$(awk '/ requests in / { print $1 }' "$WORK/$name.wrk")
    [[ $reqs =~ ^[0-9]+$ ]] && ((reqs > 0)) || die "$name: wrk served no requests: $(cat "$WORK/$name.wrk")"
    grep -q 'Socket errors' "$WORK/$name.wrk" && log "$name: $(grep 'Socket errors' "$WORK/$name.wrk")"
    local hz
    hz=$(getconf CLK_TCK)
    awk -F, -v n="$reqs" -v name="$name" -v us=$(((u1 - u0) * 1000000 / hz)) -v ss=$(((s1 - s0) * 1000000 / hz)) \
        -v ups=$(((up_u1 - up_u0 + up_s1 - up_s0) * 1000000 / hz)) -v upsw=$((up_sw1 - up_sw0)) \
        -v nstat="$WORK/$name.nstat" '
        { c[$3] = $1 }
        END {
            while ((getline line < nstat) > 0) {
                split(line, f, " ")
                if (f[1] == "TcpOutSegs") segs = f[2]
                if (f[1] == "TcpExtTCPOrigDataSent") data = f[2]
            }
            rd = c["syscalls:sys_enter_recvfrom"] + c["syscalls:sys_enter_read"] + \
                c["syscalls:sys_enter_readv"] + c["syscalls:sys_enter_recvmsg"]
            wr = c["syscalls:sys_enter_sendto"] + c["syscalls:sys_enter_write"] + \
                c["syscalls:sys_enter_writev"] + c["syscalls:sys_enter_sendmsg"]
            printf "%-11s %8d %9.3f %7.3f %7.3f %7.3f %8.3f %7.3f %7.3f %8.2f %8.2f %9.2f %9.3f\n", name, n,
                c["raw_syscalls:sys_enter"] / n, rd / n, wr / n, c["syscalls:sys_enter_epoll_wait"] / n,
                c["context-switches"] / n, data / n, segs / n, us / n, ss / n, ups / n, upsw / n
        }' "$WORK/$name.perf"
}

echo
echo "== per proxied request, $METHOD over $SCHEME, wrk -t2 -c$CONNECTIONS, ${DURATION}s, $WORKERS workers each =="
echo "   (segments: TCP segments sent by every process on the machine, wrk and upstream included;"
echo "    upstr. µs, upstr. sw: the upstream nginx's CPU, user and system, and its context switches,"
echo "    per request through this proxy)"
printf "%-11s %8s %9s %7s %7s %7s %8s %7s %7s %8s %8s %9s %9s\n" proxy requests syscalls reads writes epoll \
    switches data segs "user µs" "sys µs" "upstr. µs" "upstr. sw"
UPSTREAM_PIDS=$(pgrep -d, -P "$(cat "$WORK/upstream.pid")") || die "no upstream nginx worker found"
for ((r = 1; r <= ROUNDS; r++)); do
    measure nginx "$P_NGINX" "$(pgrep -d, -P "$(cat "$WORK/proxy.pid")")"
    measure switchyard "$P_SY" "$SY_PID"
done
