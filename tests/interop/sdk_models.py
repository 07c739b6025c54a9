"""Check what the simulated Loops API answered, and what loopwatch sent it, against
Baseten's own pydantic models (the `baseten` package, `client.managementapi._models`).

Reads the JSON lines the simulator appends to $LOOPWATCH_SIM_LOG (src/sim/state.rs,
`LOG_ENV`): {"route": "list"|"source"|"files"|"validate"|"deploy"|"models"|"deployments"|
"deployment"|"promote"|"deactivate",
"kind": "response"|"request", "body": ...}. Each body is validated in strict JSON mode
(no "123" for 123); unknown fields pass, as the models allow. Exits 1 on any mismatch,
or when a route named by --require has no sample.

    python sdk_models.py LOG [--require list,source,files,validate,deploy]
                             [--require-requests validate,deploy]
"""

import argparse
import json
import sys
from collections import Counter
from typing import Annotated, Union

from pydantic import Field, TypeAdapter, ValidationError

from baseten.client.managementapi import _models as m

RESPONSES = {
    "list": m.ListLoopsCheckpointsResponse,
    "source": m.LoopsCheckpointSourceResponse,
    "files": m.LoopsCheckpointFilesResponse,
    "validate": m.ValidateLoopsCheckpointResponse,
    "deploy": m.DeployLoopsCheckpointResponse,
    "models": m.Models,
    "deployments": m.Deployments,
    "deployment": m.Deployment,
    "promote": m.Deployment,
    "deactivate": m.DeactivateResponse,
}
REQUESTS = {
    "validate": m.ValidateLoopsCheckpointRequest,
    "deploy": m.DeployLoopsCheckpointRequest,
    "promote": m.PromoteToEnvironmentRequest,
}
# LoopsCheckpointSourceResponse falls back to any object (`| dict[str, Any]`): hold the
# simulator to the two sources it means to serve.
SOURCE = TypeAdapter(
    Annotated[
        Union[m.LoopsCheckpointS3Source, m.LoopsCheckpointVolumeSource],
        Field(discriminator="kind"),
    ]
)


def check(route: str, kind: str, body) -> list[str]:
    models = RESPONSES if kind == "response" else REQUESTS
    model = models.get(route)
    if model is None:
        return [f"no model for a {kind} of {route!r}"]
    text = json.dumps(body)
    try:
        model.model_validate_json(text, strict=True)
        if route == "source" and kind == "response":
            SOURCE.validate_json(json.dumps(body.get("source")), strict=True)
    except ValidationError as e:
        return [f"{err['loc']}: {err['msg']}" for err in e.errors()[:5]]
    except AttributeError:
        return ["not a JSON object"]
    return []


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("log")
    p.add_argument("--require", default="")
    p.add_argument("--require-requests", default="")
    args = p.parse_args()
    seen: Counter = Counter()
    failures = 0
    try:
        lines = open(args.log, encoding="utf-8").read().splitlines()
    except FileNotFoundError:
        lines = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        entry = json.loads(line)
        route, kind, body = entry["route"], entry["kind"], entry["body"]
        errors = check(route, kind, body)
        seen[(route, kind)] += 1
        if errors:
            failures += 1
            print(f"FAIL line {n}: {kind} of {route}: {'; '.join(errors)}")
            print(f"     body: {json.dumps(body)[:400]}")
    for (route, kind), count in sorted(seen.items()):
        model = (RESPONSES if kind == "response" else REQUESTS).get(route)
        print(f"ok   {count:5} {kind}s of {route:8} against {getattr(model, '__name__', '?')}")
    for kind, required in (("response", args.require), ("request", args.require_requests)):
        for route in filter(None, required.split(",")):
            if not seen[(route, kind)]:
                failures += 1
                print(f"FAIL no {kind} of {route} was recorded")
    print(f"{sum(seen.values())} bodies checked, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
