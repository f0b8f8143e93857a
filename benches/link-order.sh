#!/usr/bin/env bash
# Writes benches/link-order.txt, the order in which the release build lays out the
# executable's functions (build.rs hands it to the linker): first every function `switchyard
# serve` runs while it starts, then every function proxied requests run. An idle proxy then
# has its start-up code in a few neighbouring pages instead of pages spread over 10 MB of
# code, each of which the kernel maps with its neighbours (benches/README.md, "Idle RSS").
#
#   bash benches/link-order.sh              # builds, profiles, rewrites the file
#   SWITCHYARD_BIN=path bash benches/link-order.sh
#
# The names are the symbols of this build; after code changes some no longer exist and the
# linker skips them, so rerun this when the idle RSS in benches/memory.sh creeps up.
set -euo pipefail

PORT_BASE=${PORT_BASE:-18700}    # ports PORT_BASE+1 .. PORT_BASE+4 on 127.0.0.1
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
SWITCHYARD_BIN=${SWITCHYARD_BIN:-}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $PORT_BASE =~ ^[0-9]+$ ]] || { echo "link-order: PORT_BASE=$PORT_BASE is not a whole number" >&2; exit 2; }
P_V1=$((PORT_BASE + 1)); P_V2=$((PORT_BASE + 2)); P_SY=$((PORT_BASE + 3)); P_ADMIN=$((PORT_BASE + 4))
LOG_TAG=link-order
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"
stop_everything_on_exit
ensure_tools
ensure_valgrind
build_switchyard
BIN=${SWITCHYARD_BIN:-$PWD/target/release/switchyard}
WORK=$(mktemp -d /tmp/switchyard-order.XXXXXX)
start_upstream 1024 $P_V1 $P_V2 $P_SY $P_ADMIN

# --demangle=no: the linker wants symbol names as they are in the object file.
RUST_LOG=warn valgrind --tool=callgrind --demangle=no --dump-instr=no \
    --callgrind-out-file="$WORK/sy.%p.out" "$BIN" serve \
    --listen "127.0.0.1:$P_SY" --admin-listen "127.0.0.1:$P_ADMIN" \
    --upstream "v1=127.0.0.1:$P_V1" --upstream "v2=127.0.0.1:$P_V2" --weight v1=90 --weight v2=10 \
    --workers 2 --shutdown-grace-seconds 1 --ephemeral >"$WORK/sy.log" 2>&1 &
pid=$!
PIDS+=("$pid")
wait_http "http://127.0.0.1:$P_ADMIN/readyz" 60 "$pid" || die "switchyard did not start: $(tail -5 "$WORK/sy.log")"
sleep 1
callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control -d $pid failed"
log "start-up profiled; now the request path"
timeout 60 wrk -t1 -c8 -d3s "http://127.0.0.1:$P_SY/" >/dev/null || die "wrk failed"
for _ in 1 2 3; do
    curl -sS -o /dev/null -X POST --data-binary 'a body' "http://127.0.0.1:$P_SY/" || true
    curl -sS -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$P_SY/" || true
done
callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control -d $pid failed"

# Function names from each dump, keeping only those of switchyard's own executable.
python3 - "$BIN" "$WORK/sy.$pid.out.1" "$WORK/sy.$pid.out.2" >"$WORK/order.txt" <<'PY'
import re, sys
binary, dumps = sys.argv[1], sys.argv[2:]
seen, out = set(), []
for dump in dumps:
    objs, names, ob = {}, {}, None
    for line in open(dump, errors="replace"):
        m = re.match(r"^(c?ob)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            if m.group(3):
                objs[m.group(2)] = m.group(3)
            if m.group(1) == "ob":
                ob = objs.get(m.group(2))
            continue
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if not m:
            continue
        if m.group(3):
            names[m.group(2)] = m.group(3)
        name = names.get(m.group(2))
        # fn= lines name the function that spent the cost below them.
        if m.group(1) == "fn" and ob and ob.endswith(binary.split("/")[-1]) and name \
                and name.startswith("_") and name not in seen:
            seen.add(name)
            out.append(name)
print("\n".join(out))
PY
n=$(wc -l <"$WORK/order.txt")
((n > 500)) || die "only $n functions found in the profile; is $BIN built with symbols?"
cp "$WORK/order.txt" benches/link-order.txt
log "wrote benches/link-order.txt: $n functions"
