#!/usr/bin/env python3
"""Drive a switchyard promotion with Baseten's own Python SDK (baseten 0.13.x).

    python baseten_sdk_promotion.py --admin-url http://127.0.0.1:9090 --api-key KEY \
        [--model demo --environment production --candidate v2] [--keep-going] [--with-force]

Every call goes through ``ManagementClient(...).api`` (the SDK's generated client), so every
answer is parsed by the SDK's pydantic models. The flow:

  get_models, get_models_model_id, get_models_deployments, get_models_deployments_deployment_id,
  get_models_environments, get_models_environments_env_name,
  round 1: patch_models_environments (max_surge_percent 50, stabilization_time_seconds 3)
           -> promote -> pause (wait PAUSED) -> resume (wait traffic > 0) -> cancel
           -> wait CANCELED; the previous deployment is still current
  round 2: patch_models_environments (stabilization_time_seconds 0) -> promote
           -> wait SUCCEEDED; the candidate is current with 100%
  --with-force, rounds 3 and 4: promote the previous one back -> force_roll_forward -> SUCCEEDED;
           promote the candidate -> force_cancel -> CANCELED (ends with the previous one current,
           so the script can be run again)

One line per operation ("ok  <sdk method>  <what it showed>"). Exit 0 when everything parsed
and every assertion held; 1 naming the operation and the pydantic error (model, field path,
what was expected, what was sent) when the SDK refuses an answer, or the HTTP error, or the
failed assertion; 2 on bad arguments/unreachable server. By default it stops at the first
failure (as the SDK would); --keep-going records a refused answer, goes on with the raw JSON
of that answer, and reports every refusal at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from types import SimpleNamespace
from typing import Any, Callable

import httpx
import pydantic
from baseten.client import ManagementClient
from baseten.client.managementapi import (
    PromoteToEnvironmentRequest,
    ResponseError,
    UpdateEnvironmentRequest,
    UpdateModelPromotionSettings,
    UpdateRollingDeployConfig,
)

# UpdateEnvironmentResponse.status/.message are deprecated (still required) in the SDK's models.
warnings.filterwarnings("ignore", category=DeprecationWarning)

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED"}
WAIT_LIMIT_S = 60.0
POLL_S = 0.25


class Stop(Exception):
    """A failure that ends the run."""


class Runner:
    def __init__(self, client: ManagementClient, keep_going: bool):
        self.api = client.api
        self.keep_going = keep_going
        self.refused: dict[str, int] = {}  # refusal (method, model, fields) -> times
        self.last_body: bytes = b""
        # Keep the raw bytes of the last answer, only to show/recover it when the SDK refuses it.
        client.http_client.event_hooks["response"].append(self._remember)

    def _remember(self, response: httpx.Response) -> None:
        response.read()
        self.last_body = response.content

    def call(self, method: str, detail: Callable[[Any], str] | None = None, quiet: bool = False, **kw: Any) -> Any:
        fn = getattr(self.api, method)
        status = "ok "
        try:
            result = fn(**kw)
        except pydantic.ValidationError as e:
            msg = describe_validation(method, e, self.last_body)
            if not self.keep_going:
                raise Stop(msg) from None
            key = f"{method}: {e.title}: " + "; ".join(
                f"{'.'.join(map(str, x['loc']))} ({x['type']})" for x in e.errors())
            if key not in self.refused:  # the full error once; later ones are counted
                print(msg, file=sys.stderr)
            self.refused[key] = self.refused.get(key, 0) + 1
            result = to_namespace(json.loads(self.last_body))
            status = "BAD"
        except ResponseError as e:
            raise Stop(f"FAIL {method}: HTTP {e.status_code}: {e.body[:500]}") from None
        except ValueError as e:  # the SDK's "unexpected content type"
            raise Stop(f"FAIL {method}: {e}") from None
        except httpx.HTTPError as e:
            raise Stop(f"FAIL {method}: transport error: {e!r}") from None
        if not quiet:
            print(f"{status} {method:<48} {detail(result) if detail else ''}".rstrip(), flush=True)
        return result


def describe_validation(method: str, e: pydantic.ValidationError, raw: bytes) -> str:
    lines = [f"FAIL {method}: the SDK cannot parse switchyard's answer as {e.title} "
             f"({e.error_count()} validation error(s)):"]
    for err in e.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        if err["type"] == "missing":
            sent = "field absent"
        else:
            sent = "we sent " + json.dumps(err.get("input"), default=str)[:200]
        lines.append(f"     {e.title}.{loc}: {err['msg']} [{err['type']}]; {sent}")
    lines.append(f"     raw answer: {raw[:600].decode(errors='replace')}")
    return "\n".join(lines)


def to_namespace(v: Any) -> Any:
    if isinstance(v, dict):
        return SimpleNamespace(**{k: to_namespace(x) for k, x in v.items()})
    if isinstance(v, list):
        return [to_namespace(x) for x in v]
    return v


def get(obj: Any, *path: str) -> Any:
    for p in path:
        obj = getattr(obj, p, None)
        if obj is None:
            return None
    return obj


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise Stop(f"FAIL assertion: {what}")


def promo(env: Any) -> tuple[str | None, int | None]:
    p = get(env, "in_progress_promotion")
    return (get(p, "status"), get(p, "percent_traffic_to_new_version")) if p is not None else (None, None)


def describe_env(env: Any) -> str:
    status, pct = promo(env)
    cur = get(env, "current_deployment", "id")
    cand = get(env, "candidate_deployment", "id")
    return f"current={cur} candidate={cand} promotion={status} percent={pct}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--admin-url", required=True, help="switchyard's admin listener, e.g. http://127.0.0.1:9090")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--environment", default="production")
    ap.add_argument("--candidate", default="v2", help="deployment to promote (default v2)")
    ap.add_argument("--keep-going", action="store_true",
                    help="report an answer the SDK refuses and go on with its raw JSON")
    ap.add_argument("--with-force", action="store_true",
                    help="also exercise force_roll_forward and force_cancel (ends with the previous deployment current)")
    a = ap.parse_args()
    started = time.monotonic()
    client = ManagementClient(api_key=a.api_key, base_url_override=a.admin_url.rstrip("/"))
    r = Runner(client, a.keep_going)
    try:
        flow(r, a)
    except Stop as e:
        print(str(e), file=sys.stderr)
        if r.refused:
            print_refusals(r)
        return 1
    except httpx.HTTPError as e:
        print(f"FAIL: cannot reach {a.admin_url}: {e!r}", file=sys.stderr)
        return 2
    finally:
        client.close()
    took = time.monotonic() - started
    if r.refused:
        print_refusals(r)
        print(f"the flow completed in {took:.1f} s, but the SDK refused {sum(r.refused.values())} answer(s)", file=sys.stderr)
        return 1
    print(f"PASS: every call parsed with baseten's SDK and every check held ({took:.1f} s)")
    return 0


def print_refusals(r: Runner) -> None:
    print(f"\nanswers the SDK refused ({sum(r.refused.values())}, {len(r.refused)} distinct):", file=sys.stderr)
    for x, n in r.refused.items():
        print(f"  {x}  (x{n})", file=sys.stderr)


def flow(r: Runner, a: argparse.Namespace) -> None:
    m, e = a.model, a.environment
    ids = dict(model_id=m)
    envk = dict(model_id=m, env_name=e)

    models = r.call("get_models", lambda x: f"{len(x.models)} model(s): {[mm.id for mm in x.models]}")
    expect(any(mm.id == m for mm in models.models), f"get_models lists model {m!r}")
    model = r.call("get_models_model_id", lambda x: f"id={x.id} production_deployment_id={x.production_deployment_id}", **ids)
    expect(model.id == m, f"get_models_model_id returns id {m!r}, got {model.id!r}")

    deps = r.call("get_models_deployments",
                  lambda x: ", ".join(f"{d.id}:{d.status}" for d in x.deployments), **ids)
    dep_ids = [d.id for d in deps.deployments]
    expect(a.candidate in dep_ids, f"deployment {a.candidate!r} exists (have {dep_ids})")
    d = r.call("get_models_deployments_deployment_id",
               lambda x: f"id={x.id} status={x.status} active_replica_count={x.active_replica_count}",
               model_id=m, deployment_id=a.candidate)
    expect(d.id == a.candidate, f"get deployment returns id {a.candidate!r}, got {d.id!r}")

    envs = r.call("get_models_environments", lambda x: f"{[v.name for v in x.environments]}", **ids)
    expect(any(v.name == e for v in envs.environments), f"environment {e!r} is listed")
    env = r.call("get_models_environments_env_name", describe_env, **envk)
    status, _ = promo(env)
    expect(status is None or status in TERMINAL,
           f"no promotion may be running at the start (in_progress_promotion.status={status})")
    previous = get(env, "current_deployment", "id")
    candidate = a.candidate
    if previous == candidate:
        others = [x for x in dep_ids if x != candidate]
        expect(bool(others), f"{candidate!r} is already current and there is no other deployment to promote")
        candidate, previous = others[0], candidate
        print(f"note: {previous} is already current; promoting {candidate} instead")
    expect(previous is not None, "the environment has a current deployment")

    # Round 1: promote, pause, resume, cancel.
    settings(r, envk, max_surge_percent=50, stabilization_time_seconds=3)
    promote(r, envk, candidate)
    r.call("post_models_environments_pause_promotion", lambda x: f"success={x.success}", **envk)
    env = wait(r, envk, "PAUSED", lambda s, p: s == "PAUSED")
    expect(promo(env)[0] == "PAUSED", f"after pause the status is PAUSED, got {promo(env)[0]}")
    r.call("post_models_environments_resume_promotion", lambda x: f"success={x.success}", **envk)
    env = wait(r, envk, "traffic on the candidate", lambda s, p: s in TERMINAL or (s == "RAMPING_UP" and (p or 0) > 0))
    status, pct = promo(env)
    expect(status == "RAMPING_UP" and 0 < pct < 100,
           f"after resume the promotion ramps up (RAMPING_UP, 0 < percent < 100), got {status} {pct}%")
    c = r.call("post_models_environments_cancel_promotion", lambda x: f"status={x.status} message={x.message!r}", **envk)
    expect(c.status in ("RAMPING_DOWN", "CANCELED"), f"cancel answers RAMPING_DOWN or CANCELED, got {c.status}")
    env = wait(r, envk, "CANCELED", lambda s, p: s in TERMINAL)
    status, pct = promo(env)
    expect(status == "CANCELED", f"the canceled promotion ends CANCELED, got {status}")
    expect(pct == 0, f"after cancel percent_traffic_to_new_version is 0, got {pct}")
    expect(get(env, "current_deployment", "id") == previous,
           f"after cancel {previous} is still current, got {get(env, 'current_deployment', 'id')}")

    # Round 2: promote to the end.
    settings(r, envk, stabilization_time_seconds=0)
    promote(r, envk, candidate)
    env = wait(r, envk, "SUCCEEDED", lambda s, p: s in TERMINAL)
    check_succeeded(env, candidate)
    d = r.call("get_models_deployments_deployment_id",
               lambda x: f"id={x.id} status={x.status} is_production={x.is_production} environment={x.environment}",
               model_id=m, deployment_id=candidate)
    expect(d.is_production is True, f"{candidate} is_production after promotion to {e}")
    expect(d.environment == e, f"{candidate}.environment is {e!r}, got {d.environment!r}")
    r.call("get_models_model_id", lambda x: f"production_deployment_id={x.production_deployment_id}", **ids)
    if e == "production":
        expect(get(r.call("get_models_model_id", quiet=True, **ids), "production_deployment_id") == candidate,
               f"model.production_deployment_id is {candidate} after the promotion")

    if a.with_force:
        # Round 3: back to the previous one, forced forward.
        promote(r, envk, previous)
        r.call("post_models_environments_force_roll_forward_promotion", lambda x: f"success={x.success}", **envk)
        env = wait(r, envk, "SUCCEEDED", lambda s, p: s in TERMINAL)
        check_succeeded(env, previous)
        # Round 4: force cancel.
        promote(r, envk, candidate)
        r.call("post_models_environments_force_cancel_promotion", lambda x: f"success={x.success}", **envk)
        env = wait(r, envk, "CANCELED", lambda s, p: s in TERMINAL)
        expect(promo(env)[0] == "CANCELED", f"force cancel ends CANCELED, got {promo(env)[0]}")
        expect(get(env, "current_deployment", "id") == previous, f"after force cancel {previous} is current")


def settings(r: Runner, envk: dict, **rolling: int) -> None:
    req = UpdateEnvironmentRequest(
        promotion_settings=UpdateModelPromotionSettings(rolling_deploy_config=UpdateRollingDeployConfig(**rolling)))
    res = r.call("patch_models_environments",
                 lambda x: f"{json.dumps(req.model_dump(mode='json', exclude_unset=True))} -> status={x.status}",
                 request=req, **envk)
    expect(res.status in ("ACCEPTED", "UNCHANGED", "QUEUED"), f"PATCH status is ACCEPTED/UNCHANGED/QUEUED, got {res.status}")
    cfg = get(res, "environment", "promotion_settings", "rolling_deploy_config")
    for k, v in rolling.items():
        expect(get(cfg, k) == v, f"after PATCH promotion_settings.rolling_deploy_config.{k} == {v}, got {get(cfg, k)}")


def promote(r: Runner, envk: dict, deployment: str) -> None:
    d = r.call("post_models_environments_promote", lambda x: f"{x.id} status={x.status}",
               request=PromoteToEnvironmentRequest(deployment_id=deployment), **envk)
    expect(d.id == deployment, f"promote answers the promoted deployment {deployment}, got {d.id}")


def check_succeeded(env: Any, deployment: str) -> None:
    status, pct = promo(env)
    expect(status == "SUCCEEDED", f"the promotion to {deployment} ends SUCCEEDED, got {status} "
                                  f"(error_message={get(env, 'in_progress_promotion', 'error_message')!r})")
    expect(pct == 100, f"after success percent_traffic_to_new_version is 100, got {pct}")
    cur = get(env, "current_deployment", "id")
    expect(cur == deployment, f"after success the current deployment is {deployment}, got {cur}")


def wait(r: Runner, envk: dict, what: str, done: Callable[[str | None, int | None], bool]) -> Any:
    """Polls get_models_environments_env_name until done(status, percent), printing changes."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    t0, last = time.monotonic(), None
    refused_before = sum(r.refused.values())
    while True:
        env = r.call("get_models_environments_env_name", quiet=True, **envk)
        status, pct = promo(env)
        if (status, pct) != last:
            print(f"    {time.monotonic() - t0:5.1f}s  {describe_env(env)}", flush=True)
            last = (status, pct)
        if done(status, pct):
            mark = "ok " if sum(r.refused.values()) == refused_before else "BAD"
            print(f"{mark} {'get_models_environments_env_name':<48} (waited for {what}) {describe_env(env)}", flush=True)
            return env
        if time.monotonic() > deadline:
            raise Stop(f"FAIL waiting for {what}: still {status} at {pct}% after {WAIT_LIMIT_S:.0f} s")
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
