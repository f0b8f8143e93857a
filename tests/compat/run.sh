#!/usr/bin/env bash
# Compatibility and fuzzing of the management API against a real `switchyard demo`:
#   1. Baseten's own Python SDK drives promotions (baseten_sdk_promotion.py): every answer
#      must parse with the SDK's pydantic models;
#   2. every answer is validated against the SDK's models directly (validate_answers.py);
#   3. the served /openapi.json is validated as OpenAPI and schemathesis fuzzes the API from
#      it for a bounded time (api_fuzz.sh): no server error, no answer outside the document;
#   4. the dashboard in headless Chromium through Debian's chromedriver (dashboard_browser.py),
#      against a demo of its own that it kills and restarts; screenshots go to
#      $DASHBOARD_SCREENSHOTS (default: a new temp dir, printed).
#
#   bash tests/compat/run.sh [SWITCHYARD_BINARY]     (default: target/debug/switchyard)
#
# Python packages come from tests/compat/requirements.txt into a virtualenv at $COMPAT_VENV
# (default: $TMPDIR/switchyard-compat-venv), made on first use. Loopback only; the demo is
# stopped on exit, whatever happens.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/debug/switchyard}"
[[ -x "$bin" ]] || { echo "no switchyard binary at $bin (cargo build first)" >&2; exit 2; }
venv="${COMPAT_VENV:-${TMPDIR:-/tmp}/switchyard-compat-venv}"
if ! "$venv/bin/python" -c 'import baseten, schemathesis, openapi_spec_validator, selenium' 2>/dev/null; then
    echo "== python packages into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
fi
py="$venv/bin/python"

# Two free loopback ports, and a key of our own.
read -r proxy_port admin_port < <("$py" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()')
key="compat-$$-$RANDOM"
admin="http://127.0.0.1:$admin_port"
log="$(mktemp)"
SWITCHYARD_API_KEY="$key" "$bin" demo --listen "127.0.0.1:$proxy_port" --admin-listen "127.0.0.1:$admin_port" >"$log" 2>&1 &
demo=$!
stop_demo() {
    kill -TERM "$demo" 2>/dev/null || true
    wait "$demo" 2>/dev/null || true
}
trap 'stop_demo; rm -f "$log"' EXIT
for _ in $(seq 1 120); do
    curl -fsS --max-time 1 "$admin/readyz" >/dev/null 2>&1 && break
    kill -0 "$demo" 2>/dev/null || { echo "the demo exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.5
done
curl -fsS --max-time 1 "$admin/readyz" >/dev/null || { echo "the demo is not ready after 60 s:" >&2; cat "$log" >&2; exit 1; }

failed=0
echo "== Baseten SDK drives promotions"
"$py" "$here/baseten_sdk_promotion.py" --admin-url "$admin" --api-key "$key" --with-force || failed=1
echo "== every answer against the SDK's models"
"$py" "$here/validate_answers.py" --admin-url "$admin" --api-key "$key" || failed=1
echo "== OpenAPI document and schemathesis"
SCHEMATHESIS="$venv/bin/schemathesis" OPENAPI_SPEC_VALIDATOR="$venv/bin/openapi-spec-validator" \
    MAX_TIME="${FUZZ_SECONDS:-60}" bash "$here/api_fuzz.sh" "$admin" "$key" || failed=1
echo "== dashboard in a real browser"
"$py" "$here/dashboard_browser.py" --bin "$bin" ${DASHBOARD_SCREENSHOTS:+--screenshots "$DASHBOARD_SCREENSHOTS"} || failed=1
if [[ $failed == 0 ]]; then echo "compat: 4 passed, 0 failed"; else echo "compat: FAILED" >&2; fi
exit "$failed"
