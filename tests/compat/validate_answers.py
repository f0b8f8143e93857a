#!/usr/bin/env python3
"""Validate every switchyard management-API answer against the Baseten SDK's pydantic models,
reporting ALL errors (the SDK itself stops at the first one).

    python validate_answers.py --admin-url http://127.0.0.1:9090 --api-key KEY \
        [--model demo --environment production --candidate v2] [--no-mutate]

Fetches each endpoint with plain httpx (same Authorization header the SDK sends,
``Bearer KEY``), then calls ``<Model>.model_validate(json)`` with the model the SDK method
returns. Unless --no-mutate, it also drives PATCH, promote, pause, resume, cancel (and
force_cancel / force_roll_forward) to validate those answers. Exit 1 if any answer fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import httpx
import pydantic
from baseten.client.managementapi import _models as M

FAILED: list[str] = []


def check(op: str, sdk_method: str, model: type[pydantic.BaseModel], resp: httpx.Response):
    head = f"{op:<58} {sdk_method} -> {model.__name__}"
    if resp.status_code != 200:
        FAILED.append(op)
        print(f"HTTP {resp.status_code} {head}: {resp.text[:300]}")
        return None
    ct = resp.headers.get("content-type", "")
    if not ct.startswith("application/json"):
        FAILED.append(op)
        print(f"BAD-CT {head}: content-type {ct!r}")
        return None
    body = resp.json()
    try:
        model.model_validate(body)
        print(f"ok     {head}")
    except pydantic.ValidationError as e:
        FAILED.append(op)
        print(f"FAIL   {head}: {e.error_count()} error(s)")
        for err in e.errors(include_url=False):
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "missing":
                sent = "field absent"
            else:
                inp = json.dumps(err.get("input"), default=str)
                sent = "we sent " + (inp if len(inp) <= 120 else inp[:117] + "...")
            print(f"         {model.__name__}.{loc}: [{err['type']}] {err['msg']}; {sent}")
    return body


def wait_for(c: httpx.Client, envp: str, ok, what: str, within: float = 30.0) -> None:
    """Polls the environment until `ok(in_progress_promotion)`; a failure names `what`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        p = c.get(envp).json().get("in_progress_promotion")
        if ok(p):
            return
        time.sleep(0.2)
    FAILED.append(f"waited {within:.0f} s for {what}")
    print(f"FAIL   waited {within:.0f} s for {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--admin-url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--environment", default="production")
    ap.add_argument("--candidate", default="v2")
    ap.add_argument("--no-mutate", action="store_true", help="only the GETs")
    a = ap.parse_args()
    m, e, cand = a.model, a.environment, a.candidate
    c = httpx.Client(base_url=a.admin_url.rstrip("/"), headers={"Authorization": f"Bearer {a.api_key}"}, timeout=10)
    envp = f"/v1/models/{m}/environments/{e}"

    check("GET /v1/models", "get_models", M.Models, c.get("/v1/models"))
    check(f"GET /v1/models/{m}", "get_models_model_id", M.Model, c.get(f"/v1/models/{m}"))
    deps = check(f"GET /v1/models/{m}/deployments", "get_models_deployments", M.Deployments,
                 c.get(f"/v1/models/{m}/deployments"))
    for d in (deps or {}).get("deployments", []):
        check(f"GET /v1/models/{m}/deployments/{d['id']}", "get_models_deployments_deployment_id",
              M.Deployment, c.get(f"/v1/models/{m}/deployments/{d['id']}"))
    check(f"GET /v1/models/{m}/environments", "get_models_environments", M.Environments,
          c.get(f"/v1/models/{m}/environments"))
    env = check(f"GET {envp}", "get_models_environments_env_name", M.Environment, c.get(envp))
    if a.no_mutate:
        return report()

    if env and (env.get("current_deployment") or {}).get("id") == cand:
        print(f"note: {cand} is already current; nothing to promote", file=sys.stderr)
        return report()

    # The SDK serializes request models with exclude_unset=True, so this is the exact body it sends.
    req = M.UpdateEnvironmentRequest(promotion_settings=M.UpdateModelPromotionSettings(
        rolling_deploy_config=M.UpdateRollingDeployConfig(max_surge_percent=50, stabilization_time_seconds=3)))
    body = req.model_dump(mode="json", exclude_unset=True, by_alias=True)
    check(f"PATCH {envp} {json.dumps(body)}", "patch_models_environments", M.UpdateEnvironmentResponse,
          c.patch(envp, json=body))

    body = M.PromoteToEnvironmentRequest(deployment_id=cand).model_dump(mode="json", exclude_unset=True)
    check(f"POST {envp}/promote {json.dumps(body)}", "post_models_environments_promote", M.Deployment,
          c.post(f"{envp}/promote", json=body))
    check(f"GET {envp} (promotion running)", "get_models_environments_env_name", M.Environment, c.get(envp))
    check(f"POST {envp}/pause_promotion", "post_models_environments_pause_promotion",
          M.SignalPromotionResponse, c.post(f"{envp}/pause_promotion"))
    time.sleep(1.5)
    check(f"GET {envp} (paused)", "get_models_environments_env_name", M.Environment, c.get(envp))
    check(f"POST {envp}/resume_promotion", "post_models_environments_resume_promotion",
          M.SignalPromotionResponse, c.post(f"{envp}/resume_promotion"))
    # Cancel ramps back only once traffic moved; wait for that (stabilization keeps it there).
    wait_for(c, envp, lambda p: p and p["percent_traffic_to_new_version"] > 0, "traffic on the candidate")
    check(f"POST {envp}/cancel_promotion", "post_models_environments_cancel_promotion",
          M.CancelPromotionResponse, c.post(f"{envp}/cancel_promotion"))
    check(f"GET {envp} (ramping down)", "get_models_environments_env_name", M.Environment, c.get(envp))
    check(f"POST {envp}/force_cancel_promotion", "post_models_environments_force_cancel_promotion",
          M.SignalPromotionResponse, c.post(f"{envp}/force_cancel_promotion"))
    check(f"GET {envp} (after cancel)", "get_models_environments_env_name", M.Environment, c.get(envp))
    check(f"GET /v1/models/{m}/deployments (after cancel)", "get_models_deployments", M.Deployments,
          c.get(f"/v1/models/{m}/deployments"))
    # Force roll forward ends the promotion at the next step boundary (a stabilization wait ends
    # at once).
    check(f"POST {envp}/promote {json.dumps(body)}", "post_models_environments_promote", M.Deployment,
          c.post(f"{envp}/promote", json=body))
    check(f"POST {envp}/force_roll_forward_promotion", "post_models_environments_force_roll_forward_promotion",
          M.SignalPromotionResponse, c.post(f"{envp}/force_roll_forward_promotion"))
    wait_for(c, envp, lambda p: p and p["status"] == "SUCCEEDED", "SUCCEEDED")
    check(f"GET {envp} (after force roll forward)", "get_models_environments_env_name", M.Environment,
          c.get(envp))
    return report()


def report() -> int:
    if FAILED:
        print(f"\n{len(FAILED)} answer(s) the SDK would refuse:", *FAILED, sep="\n  ")
        return 1
    print("\nevery answer parses with the SDK's models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
