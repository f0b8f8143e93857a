#!/usr/bin/env bash
# switchyard's memory: idle RSS, RSS per open client connection under 5,000 concurrent
# connections, and whether RSS keeps growing over repeated load rounds. Everything runs on
# 127.0.0.1 and stops by itself. See benches/README.md.
#
#   bash benches/memory.sh
#   DURATION=5 LEAK_ROUNDS=2 bash benches/memory.sh   # a quick look
set -euo pipefail

CLIENTS=${CLIENTS:-5000}          # concurrent client connections (wrk -c)
THREADS=${THREADS:-2}             # wrk -t
DURATION=${DURATION:-10}          # seconds of load per round
LEAK_ROUNDS=${LEAK_ROUNDS:-5}     # load rounds; round 1 also gives the per-connection figure
SETTLE=${SETTLE:-3}               # seconds after a round before its RSS is read
WORKERS=${WORKERS:-2}             # switchyard --workers
PORT_BASE=${PORT_BASE:-18200}     # ports PORT_BASE+1 .. PORT_BASE+4 on 127.0.0.1
STRICT=${STRICT:-0}               # 1 = exit 1 when a target is missed
SKIP_BUILD=${SKIP_BUILD:-0}       # 1 = use the existing target/release/switchyard
KEEP_WORK=${KEEP_WORK:-0}         # 1 = keep the temp dir (configs, logs, samples)
SWITCHYARD_BIN=${SWITCHYARD_BIN:-} # another build to measure instead of target/release/switchyard
IDLE_MAX_MB=${IDLE_MAX_MB:-8}
PER_CONN_MAX_KB=${PER_CONN_MAX_KB:-20}
LEAK_MAX_PCT=${LEAK_MAX_PCT:-10}

cd "$(dirname "${BASH_SOURCE[0]}")/.."

for v in CLIENTS THREADS DURATION LEAK_ROUNDS SETTLE WORKERS PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "memory: $v=${!v} is not a whole number" >&2; exit 2; }
done
(( CLIENTS >= THREADS && THREADS >= 1 && DURATION >= 1 && LEAK_ROUNDS >= 1 )) ||
    { echo "memory: need CLIENTS>=THREADS>=1, DURATION>=1, LEAK_ROUNDS>=1" >&2; exit 2; }

P_V1=$((PORT_BASE + 1))     # nginx upstream, deployment v1
P_V2=$((PORT_BASE + 2))     # nginx upstream, deployment v2
P_SY=$((PORT_BASE + 3))     # switchyard proxy
P_ADMIN=$((PORT_BASE + 4))  # switchyard admin

LOG_TAG=memory
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

# ---------------------------------------------------------------------------------------------
# Processes, and cleaning them up whatever happens.

before_cleanup() { [[ -n $WORK && -d $WORK ]] && touch "$WORK/stop-sampler" 2>/dev/null; }
stop_everything_on_exit


rss_kb() { awk '/^VmRSS:/ { print $2; f = 1 } END { if (!f) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0; }
client_conns() { ss -Htn state established "( sport = :$P_SY )" 2>/dev/null | wc -l; }
upstream_conns() { ss -Htn state established "( dport = :$P_V1 or dport = :$P_V2 )" 2>/dev/null | wc -l; }

# ---------------------------------------------------------------------------------------------
# Setup.

ensure_tools
if [[ -n $SWITCHYARD_BIN ]]; then
    [[ -x $SWITCHYARD_BIN ]] || die "SWITCHYARD_BIN=$SWITCHYARD_BIN is not an executable"
    BIN=$SWITCHYARD_BIN
else
    build_switchyard
    BIN=$PWD/target/release/switchyard
fi

# wrk holds CLIENTS sockets; switchyard holds CLIENTS client sockets plus its upstream side.
want_fds=$((CLIENTS * 2 + 2000))
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
((NOFILE >= want_fds)) || die "open-file limit is $NOFILE (hard $(ulimit -Hn)), need $want_fds for CLIENTS=$CLIENTS"
NGINX_CONNS=$((CLIENTS * 2 + 1000))
((NGINX_CONNS > 20000)) || NGINX_CONNS=20000
((NGINX_CONNS < NOFILE - 100)) || NGINX_CONNS=$((NOFILE - 100))

WORK=$(mktemp -d /tmp/switchyard-memory.XXXXXX)
for p in $P_V1 $P_V2 $P_SY $P_ADMIN; do
    port_free "$p" || die "port 127.0.0.1:$p is in use; pick another PORT_BASE"
done

write_upstream_conf "$NGINX_CONNS" "$NOFILE"
nginx -t -q -p "$WORK" -e "$WORK/upstream-error.log" -c "$WORK/upstream.conf" ||
    die "nginx config test failed (see $WORK/upstream.conf)"
nginx -p "$WORK" -e "$WORK/upstream-error.log" -c "$WORK/upstream.conf" >>"$WORK/upstream-error.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
for p in $P_V1 $P_V2; do
    wait_http "http://127.0.0.1:$p/" 10 "$NGINX_PID" || die "nginx upstream did not answer on :$p ($(tail -3 "$WORK/upstream-error.log"))"
done

RUST_LOG=${RUST_LOG:-warn} "$BIN" serve \
    --listen "127.0.0.1:$P_SY" --admin-listen "127.0.0.1:$P_ADMIN" \
    --upstream "v1=127.0.0.1:$P_V1" --upstream "v2=127.0.0.1:$P_V2" \
    --weight v1=90 --weight v2=10 --workers "$WORKERS" --shutdown-grace-seconds 1 --ephemeral \
    >"$WORK/switchyard.log" 2>&1 &
SY_PID=$!
PIDS+=("$SY_PID")
wait_http "http://127.0.0.1:$P_ADMIN/readyz" 15 "$SY_PID" ||
    die "switchyard not ready: $(tail -5 "$WORK/switchyard.log")"
sleep 0.5
IDLE_KB=$(rss_kb "$SY_PID")
sy_nofile=$(awk '/^Max open files/ { print $4 }' "/proc/$SY_PID/limits")
curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$P_SY/" || die "switchyard did not proxy a request"
log "switchyard $("$BIN" --version | awk '{print $2}') pid $SY_PID, workers=$WORKERS, open-file limit $sy_nofile; idle VmRSS ${IDLE_KB} kB"
log "$LEAK_ROUNDS rounds of wrk -t$THREADS -c$CLIENTS -d${DURATION}s, RSS read ${SETTLE}s after each"

# ---------------------------------------------------------------------------------------------
# Load rounds.

sampler() { # OUTFILE: one line every 0.5 s: rss_kb client_conns upstream_conns fds
    local out=$1 n=0 max=$(((DURATION + 60) * 2))
    while [[ ! -e $WORK/stop-sampler ]] && ((n < max)) && kill -0 "$SY_PID" 2>/dev/null; do
        printf '%s %s %s %s\n' "$(rss_kb "$SY_PID")" "$(client_conns)" "$(upstream_conns)" \
            "$(find "/proc/$SY_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)" >>"$out"
        n=$((n + 1))
        sleep 0.5
    done
}

declare -a PEAK_RSS PEAK_CONNS PEAK_UP PEAK_FDS SETTLED RPS ERRS
for ((r = 1; r <= LEAK_ROUNDS; r++)); do
    rm -f "$WORK/stop-sampler"
    sampler "$WORK/samples-$r.txt" &
    SAMPLER_PID=$!
    out="$WORK/wrk-$r.txt"
    timeout $((DURATION + 60)) wrk -t"$THREADS" -c"$CLIENTS" -d"${DURATION}s" --timeout 10s \
        "http://127.0.0.1:$P_SY/" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { WRK_PID=""; cat "$out" >&2; die "wrk failed in round $r"; }
    WRK_PID=""
    touch "$WORK/stop-sampler"
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
    kill -0 "$SY_PID" 2>/dev/null || { tail -20 "$WORK/switchyard.log" >&2; log "ERROR: switchyard exited during round $r"; exit 1; }
    read -r "PEAK_RSS[r]" "PEAK_CONNS[r]" "PEAK_UP[r]" "PEAK_FDS[r]" < <(awk '
        { if ($1 > a) a = $1; if ($2 > b) b = $2; if ($3 > c) c = $3; if ($4 > d) d = $4 }
        END { printf "%d %d %d %d\n", a, b, c, d }' "$WORK/samples-$r.txt")
    RPS[r]=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    n2=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out"); n2=${n2:-0}
    se=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$out"); se=${se:-0}
    ERRS[r]="$n2/$se"
    if ((n2 + se > 0)); then
        log "round $r: non-2xx=$n2, $(grep 'Socket errors' "$out" | sed 's/^ *//' || true)"
    fi
    sleep "$SETTLE"
    SETTLED[r]=$(rss_kb "$SY_PID")
    settled_up=$(upstream_conns)
    printf 'round %d  peak: VmRSS %7d kB, %5d client + %5d upstream conns, %5d fds  |  settled: VmRSS %7d kB, %4d upstream conns  |  %6s req/s, non-2xx/socket errors %s\n' \
        "$r" "${PEAK_RSS[r]}" "${PEAK_CONNS[r]}" "${PEAK_UP[r]}" "${PEAK_FDS[r]}" "${SETTLED[r]}" "$settled_up" "${RPS[r]:-?}" "${ERRS[r]}"
done

# ---------------------------------------------------------------------------------------------
# Report.

verdict() { if (($1)); then echo PASS; else echo FAIL; fi; }

echo
echo "== memory summary: switchyard --workers $WORKERS, wrk -t$THREADS -c$CLIENTS -d${DURATION}s x $LEAK_ROUNDS rounds =="
idle_mb=$(awk -v k="$IDLE_KB" 'BEGIN { printf "%.1f", k / 1024 }')
idle_ok=$(awk -v k="$IDLE_KB" -v m="$IDLE_MAX_MB" 'BEGIN { print (k > 0 && k / 1024 < m) ? 1 : 0 }')
printf '%-34s %s MiB (%s kB)   want < %s MiB   %s\n' "idle VmRSS:" "$idle_mb" "$IDLE_KB" "$IDLE_MAX_MB" "$(verdict "$idle_ok")"
# Most of the idle RSS is executable text, kept low only while benches/link-order.txt names
# this build's functions (benches/README.md, "Idle RSS"); a stale file is the usual cause of
# a failed idle target.
if command -v nm >/dev/null && [[ -s benches/link-order.txt ]]; then
    order_total=$(sort -u benches/link-order.txt | wc -l)
    order_found=$(nm --defined-only "$BIN" 2>/dev/null | awk '{ print $3 }' | sort -u |
        comm -12 - <(sort -u benches/link-order.txt) | wc -l)
    printf '%-34s %d of %d names of benches/link-order.txt are in this binary\n' "link order:" "$order_found" "$order_total"
    ((order_found * 10 >= order_total * 8)) ||
        echo "  the order file is stale for this build: run 'bash benches/link-order.sh', rebuild, measure again"
fi

conns=${PEAK_CONNS[1]}
per_conn=$(awk -v p="${PEAK_RSS[1]}" -v i="$IDLE_KB" -v c="$conns" 'BEGIN { printf "%.1f", (c > 0 ? (p - i) / c : 0) }')
conns_ok=$(awk -v c="$conns" -v w="$CLIENTS" 'BEGIN { print (c >= 0.9 * w) ? 1 : 0 }')
per_ok=$(awk -v x="$per_conn" -v m="$PER_CONN_MAX_KB" -v c="$conns_ok" 'BEGIN { print (c && x < m) ? 1 : 0 }')
printf '%-34s %s kB (%s MiB) with %d client + %d upstream connections open\n' "peak VmRSS under load (round 1):" \
    "${PEAK_RSS[1]}" "$(awk -v k="${PEAK_RSS[1]}" 'BEGIN { printf "%.1f", k / 1024 }')" "$conns" "${PEAK_UP[1]}"
printf '%-34s %s kB   want < %s kB   %s\n' "(peak - idle) per client conn:" "$per_conn" "$PER_CONN_MAX_KB" "$(verdict "$per_ok")"
((conns_ok)) || echo "  only $conns of $CLIENTS client connections were seen open: the per-connection figure does not count"

# The leak check compares each round's peak: the same load reaches the same high-water mark
# unless memory is kept between rounds. The RSS after a round is shown but not judged: the
# allocator hands freed pages back on its own schedule, so it swung between 36 and 67 MB from
# round to round of the same build (benches/README.md).
peaks=""
series=""
for ((r = 1; r <= LEAK_ROUNDS; r++)); do peaks+="${PEAK_RSS[r]} "; series+="${SETTLED[r]} "; done
if ((LEAK_ROUNDS >= 3)); then base_r=2; else base_r=1; fi
base=${PEAK_RSS[base_r]}
last=${PEAK_RSS[LEAK_ROUNDS]}
growth=$(awk -v b="$base" -v l="$last" 'BEGIN { printf "%.1f", (b > 0 ? 100 * (l - b) / b : 0) }')
leak_ok=$(awk -v g="$growth" -v m="$LEAK_MAX_PCT" 'BEGIN { print (g <= m) ? 1 : 0 }')
printf '%-34s %s(kB)\n' "peak VmRSS in each round:" "$peaks"
printf '%-34s %s(kB, not judged)\n' "settled VmRSS after each round:" "$series"
printf '%-34s %s%% (round %d -> round %d peak)   want <= %s%%   %s\n' "growth:" "$growth" "$base_r" "$LEAK_ROUNDS" \
    "$LEAK_MAX_PCT" "$(verdict "$leak_ok")"
if ((leak_ok)); then echo "  RSS is not growing"; else echo "  RSS is growing"; fi
((LEAK_ROUNDS >= 3)) || echo "  (fewer than 3 rounds: compared with round 1, which includes first-load growth; use LEAK_ROUNDS>=3)"
total_errs=0
for ((r = 1; r <= LEAK_ROUNDS; r++)); do total_errs=$((total_errs + ${ERRS[r]%/*} + ${ERRS[r]#*/})); done
((total_errs == 0)) || echo "WARNING: wrk saw $total_errs non-2xx responses or socket errors in total (see the rounds above)"

fails=$((3 - idle_ok - per_ok - leak_ok))
echo
if ((fails == 0)); then echo "PASS: all memory targets met"; else echo "FAIL: $fails memory target(s) missed"; fi
if ((fails > 0)) && [[ $STRICT == 1 ]]; then exit 1; fi
exit 0
