"""Deployments: read from prefect.yaml (the one place they are declared), served locally or
triggered on a running Prefect server."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from flows.experiments import EXPERIMENTS, by_flow
from flows.params import parse_overrides, validate

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_DIR / "prefect.yaml"


def declared_deployments(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments`` of prefect.yaml, each with its flow name added (``flow/name`` is
    how Prefect names a deployment)."""
    from prefect.flows import load_flow_from_entrypoint

    spec = read_spec(path)
    out = []
    for dep in spec.get("deployments", []):
        flow = load_flow_from_entrypoint(str(PROJECT_DIR / dep["entrypoint"]))
        out.append({**dep, "flow": flow, "full_name": f"{flow.name}/{dep['name']}"})
    return out


def read_spec(path: Path) -> dict[str, Any]:
    """A prefect.yaml, parsed; a file that is not one is refused in one line naming it."""
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise ValueError(f"{path}: not a readable prefect.yaml ({reason})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("deployments"), list):
        raise ValueError(f"{path}: no 'deployments' list")
    return spec


def serve_all(declared: list[dict[str, Any]], limit: int | None = None) -> None:
    """Run every deployment of ``declared`` (``declared_deployments``) on its schedule in this
    process (``prefect.serve``), no work pool or worker needed. Blocks until interrupted."""
    from prefect import serve
    from prefect.schedules import Cron

    deployments = [
        dep["flow"].to_deployment(
            name=dep["name"],
            description=dep.get("description"),
            tags=dep.get("tags"),
            parameters=dep.get("parameters") or {},
            schedules=[
                Cron(s["cron"], timezone=s.get("timezone", "UTC"))
                for s in dep.get("schedules") or []
            ],
        )
        for dep in declared
    ]
    serve(*deployments, limit=limit)


def run_on_server(name: str, sets: list[str], wait: bool, timeout: float):
    """Create a flow run of deployment ``name`` on the server at PREFECT_API_URL with the
    ``key=value`` overrides read as the types of the deployment's flow's parameters; with
    ``wait``, poll until it ends. Returns the flow run."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.flows import load_flow_from_entrypoint
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ValueError("PREFECT_API_URL is not set: start a server (mlcore server) and export it")
    if "/" not in name:
        raise ValueError(
            f"deployment {name!r} must be FLOW/DEPLOYMENT, e.g. housing_regression/nightly"
        )
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            flows = {f.id: f.name for f in client.read_flows()}
            known = ", ".join(
                f"{flows.get(d.flow_id, '?')}/{d.name}" for d in client.read_deployments()
            )
            raise ValueError(
                f"no deployment {name!r} on the server (deployments: {known or 'none'})"
            ) from None
    flow = load_flow_from_entrypoint(str(PROJECT_DIR / deployment.entrypoint))
    exp = by_flow(flow.name)
    if exp is None:
        raise ValueError(f"deployment {name!r} runs {flow.name}, which is no mlcore experiment")
    parameters = parse_overrides(exp, sets)
    return run_deployment(name, parameters=parameters, timeout=timeout if wait else 0)


def deployment_problems(config: Mapping, defaults: bool = True) -> list[str]:
    """What in a parsed ``prefect.yaml`` disagrees with the registry: a deployment of an
    unknown entrypoint, a parameter its flow does not have, a value that does not parse, or
    (with ``defaults``, for the project's own file) a value that differs from the registry's
    default (a deployment restating a default must restate the current one)."""
    entry = {e.entrypoint: e for e in EXPERIMENTS.values()}
    problems = []
    for dep in config.get("deployments") or []:
        where = f"deployment {dep.get('name')!r}"
        exp = entry.get(dep.get("entrypoint"))
        if exp is None:
            problems.append(f"{where}: entrypoint {dep.get('entrypoint')!r} is no experiment's")
            continue
        for key, value in (dep.get("parameters") or {}).items():
            param = next((p for p in exp.params if p.name == key), None)
            if param is None:
                problems.append(f"{where}: {exp.name} has no parameter {key!r}")
                continue
            try:
                validate(param, value, f"{where}: {key}")
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if not defaults:
                continue
            default, dataset = param.default, None
            if default is None and param.per_dataset is not None and value is not None:
                dataset = (dep.get("parameters") or {}).get("dataset", exp.defaults()["dataset"])
                default = param.per_dataset.get(dataset)
            if value != default:
                text = f"{where}: {key} is {value!r}, the registry's default is {default!r}"
                problems.append(text + (f" for {dataset}" if dataset else ""))
    return problems
