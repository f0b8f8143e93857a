#!/usr/bin/env bash
# Validate switchyard's served OpenAPI document and fuzz the management API against it.
#
#   bash api_fuzz.sh [ADMIN_URL [API_KEY]]
#   (or SWITCHYARD_ADMIN_URL / SWITCHYARD_API_KEY in the environment)
#
# 1. GET $ADMIN_URL/openapi.json into a temp file and run openapi-spec-validator on it.
# 2. schemathesis (4.x) run against $ADMIN_URL/openapi.json with `Authorization: Api-Key KEY`,
#    every check (`--checks all`: server errors, schema, status and content-type conformance,
#    schema-valid data accepted, invalid data rejected, ...; override with CHECKS=...). One
#    exception, in the generated schemathesis.toml: "schema-valid request accepted" is off for
#    PATCH updateEnvironment only (see there why).
# Bounded: MAX_EXAMPLES (default 15) cases per operation, MAX_TIME (default 60) seconds for
# schemathesis, a hard `timeout` of MAX_TIME+30 s around it. Exit 0 when both pass, 1 on any
# failure (2 on bad usage or when the document cannot be fetched).
#
# The fuzzer calls promote / cancel / pause / activate / deactivate / PATCH with random data:
# run it against a throwaway instance (e.g. `switchyard demo`), never a real one.
# POST /v1/models/{model_id}/deployments (operationId createDeployment) is excluded by default:
# a "process" deployment makes switchyard run the generated argv as a command once something
# scales it up. So is POST .../deployments/{deployment_id}/endpoints (registerEndpoint): a
# registered endpoint is probed with TCP connects, and generated addresses are anywhere.
# FUZZ_REGISTER=1 includes both.
#
# Path parameters model_id and env_name are pinned to FUZZ_MODEL (default demo) and FUZZ_ENV
# (default production) through a generated schemathesis.toml, so promote/pause/cancel/PATCH reach
# the controller instead of answering 404; set FUZZ_MODEL= FUZZ_ENV= (empty) to fuzz them too.
#
# Other knobs: SCHEMATHESIS, OPENAPI_SPEC_VALIDATOR (executables; default: on PATH),
# SEED (reproducible run), PHASES (default: examples,coverage,fuzzing,stateful),
# REPORT_DIR (junit + ndjson reports are kept there when set).
set -uo pipefail

ADMIN_URL="${1:-${SWITCHYARD_ADMIN_URL:-}}"
API_KEY="${2:-${SWITCHYARD_API_KEY:-}}"
if [[ -z "$ADMIN_URL" || -z "$API_KEY" ]]; then
    echo "usage: $0 ADMIN_URL API_KEY   (or SWITCHYARD_ADMIN_URL and SWITCHYARD_API_KEY)" >&2
    exit 2
fi
ADMIN_URL="${ADMIN_URL%/}"

pick() { # an executable: $1 if set, else $2 on PATH
    if [[ -n "$1" ]]; then echo "$1"; else echo "$2"; fi
}
ST="$(pick "${SCHEMATHESIS:-}" schemathesis)"
OSV="$(pick "${OPENAPI_SPEC_VALIDATOR:-}" openapi-spec-validator)"
MAX_EXAMPLES="${MAX_EXAMPLES:-15}"
MAX_TIME="${MAX_TIME:-60}"
CHECKS="${CHECKS:-all}"
PHASES="${PHASES:-examples,coverage,fuzzing,stateful}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0

echo "== 1. openapi-spec-validator on $ADMIN_URL/openapi.json"
if ! curl -fsS --max-time 10 "$ADMIN_URL/openapi.json" -o "$tmp/openapi.json"; then
    echo "FAIL: cannot fetch $ADMIN_URL/openapi.json" >&2
    exit 2
fi
if "$OSV" --validation-errors all --subschema-errors all "$tmp/openapi.json"; then
    echo "ok: the served document is valid OpenAPI"
else
    echo "FAIL: openapi-spec-validator rejects the served document" >&2
    failed=1
fi
served_server="$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(",".join(s.get("url","") for s in d.get("servers",[])))' "$tmp/openapi.json" 2>/dev/null || true)"
if [[ -n "$served_server" && "$served_server" != "$ADMIN_URL" ]]; then
    echo "note: the document's servers[] is '$served_server', not $ADMIN_URL (schemathesis gets --url $ADMIN_URL)"
fi

FUZZ_MODEL="${FUZZ_MODEL-demo}"
FUZZ_ENV="${FUZZ_ENV-production}"
{
    echo "[parameters]"
    [[ -n "$FUZZ_MODEL" ]] && echo "\"path.model_id\" = \"$FUZZ_MODEL\""
    [[ -n "$FUZZ_ENV" ]] && echo "\"path.env_name\" = \"$FUZZ_ENV\""
    # PATCH is a partial update checked against the environment's current settings: exactly one
    # of max_surge_percent / max_unavailable_percent is non-zero, min_replica <= max_replica.
    # No JSON Schema can say that of a partial body (it depends on the values not sent), so a
    # schema-valid PATCH may rightly get a 400 naming the field. Every other check still runs
    # on it, and every check on every other operation.
    if [[ "$CHECKS" == all ]]; then
        # Every check, named here rather than with `--checks all` on the command line, which
        # would override the one per-operation exception below.
        echo
        echo "[checks]"
        for c in not_a_server_error status_code_conformance content_type_conformance \
            response_schema_conformance response_headers_conformance positive_data_acceptance \
            negative_data_rejection use_after_free ensure_resource_availability \
            missing_required_header ignored_auth unsupported_method allow_header_conformance; do
            echo "$c.enabled = true"
        done
    fi
    echo
    echo "[[operations]]"
    echo "include-operation-id = \"updateEnvironment\""
    echo "checks.positive_data_acceptance.enabled = false"
} > "$tmp/schemathesis.toml"

echo "== 2. schemathesis run (checks: $CHECKS; phases: $PHASES; model_id=${FUZZ_MODEL:-*} env_name=${FUZZ_ENV:-*}; max $MAX_EXAMPLES examples/operation, $MAX_TIME s)"
args=(--config-file "$tmp/schemathesis.toml" run "$ADMIN_URL/openapi.json"
    --url "$ADMIN_URL"
    -H "Authorization: Api-Key $API_KEY"
    --phases "$PHASES"
    --max-examples "$MAX_EXAMPLES"
    --max-time "$MAX_TIME"
    --request-timeout 5
    --workers 1
    --continue-on-failure
    --generation-database none
    --no-color)
[[ "$CHECKS" == all ]] || args+=(--checks "$CHECKS")
[[ "${FUZZ_REGISTER:-0}" == 1 ]] || args+=(--exclude-operation-id createDeployment --exclude-operation-id registerEndpoint)
[[ -n "${SEED:-}" ]] && args+=(--seed "$SEED")
if [[ -n "${REPORT_DIR:-}" ]]; then
    mkdir -p "$REPORT_DIR"
    args+=(--report junit,ndjson --report-dir "$(cd "$REPORT_DIR" && pwd)")
fi
cd "$tmp" # hypothesis/schemathesis leave .hypothesis/ and .schemathesis/ in the working directory
# Events: with `Accept: text/event-stream` that route streams forever; --request-timeout bounds it.
timeout --kill-after=10 "$((MAX_TIME + 30))" "$ST" "${args[@]}"
rc=$?
case $rc in
    0) echo "ok: schemathesis found nothing" ;;
    124|137) echo "FAIL: schemathesis did not finish within $((MAX_TIME + 30)) s" >&2; failed=1 ;;
    *) echo "FAIL: schemathesis reported failures (exit $rc)" >&2; failed=1 ;;
esac
exit "$failed"
