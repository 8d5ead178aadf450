"""``mlcore sync``: what a flow kept in ``./mlcore-unsent/<run id>/`` while the tracking store
was away (see `tasks.tracking.spool`) sent into its run, once the store is back.

Each piece is removed from the folder as soon as the store has taken it, so a sync that is
interrupted (the store gone again) sends the rest the next time, never a piece twice:
- each kept model is logged again as the same pyfunc model (its arrays, input example and
  kind; the code of its kind must be the one it was trained with), and every kept tag that
  named its folder names its model URI instead;
- a child run the store never saw (``unsent-<id>/``) is created under its parent, and its
  folder renamed after the new run;
- then params, tags, metrics (in batches), datasets and artifacts, run by run;
- the emptied folder goes, and the flow's run gets the tag ``mlcore.synced`` (when).

A run the store could not be told the end of is ended as its flow ended it (``end.json``: a
flow whose store went away ends FAILED, never FINISHED; a child that finished, FINISHED).
"""

from __future__ import annotations

import csv
import datetime
import json
import shutil
from pathlib import Path

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from tasks.tracking.models import PYFUNC_DIR, file_sha256, log_pyfunc_model
from tasks.tracking.ownership import reap_if_dead
from tasks.tracking.spool import UNSENT_DIR, read_json
from tasks.tracking.store import client, tracking_uri

LOCAL_CHILD = "unsent-"  # a child run the store never saw (`tasks.tracking.runs.child_run`)
# what MLflow takes in one log_batch call: 1000 metrics, 100 params, 100 tags
BATCH = {"metrics": 1000, "params": 100, "tags": 100}


def waiting(where: Path | None = None) -> list[Path]:
    """The flows' folders waiting in ``where`` (default ``./mlcore-unsent``)."""
    root = where or Path.cwd() / UNSENT_DIR
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def sync_folder(folder: Path) -> dict:
    """Send the flow's folder ``./mlcore-unsent/<run id>`` into its run and remove it. Returns
    ``{"run_id", "runs", "metrics", "models"}`` (what was sent)."""
    run_id = folder.name
    try:
        run = client().get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow's "not found" has several types
        raise ValueError(
            f"{folder}: the tracking store {tracking_uri()} has no run {run_id} (is "
            "MLFLOW_TRACKING_URI the store the flow ran against?)"
        ) from exc
    # a flow that ended offline kept its end (end.json), told below; without it, the flow is
    # still running, or its process died (the run is then ended KILLED, as any command would)
    if run.info.status == "RUNNING" and not (folder / "end.json").is_file():
        reap_if_dead(run_id)
        if client().get_run(run_id).info.status == "RUNNING":
            raise ValueError(f"{folder}: its run {run_id} is still running in a live process")
    sent = {"run_id": run_id, "runs": 0, "metrics": 0, "models": 0}
    runs = [(folder, run_id)]
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and _is_run(p)):
        where = _created(child, run) if child.name.startswith(LOCAL_CHILD) else child
        runs.append((where, where.name))
    for where, rid in runs:  # models first: the tags that name their folders are rewritten
        for model in sorted(p for p in where.iterdir() if (p / "weights.npz").is_file()):
            uri = _log_model(rid, model)
            _rename_in_tags([d for d, _ in runs], model, uri)
            shutil.rmtree(model)
            sent["models"] += 1
    for where, rid in runs:
        sent["metrics"] += _send_run(where, rid)
        sent["runs"] += 1
    client().set_tag(run_id, "mlcore.synced", datetime.datetime.now().isoformat(timespec="seconds"))
    shutil.rmtree(folder)
    return sent


def _is_run(path: Path) -> bool:
    """A child run's folder (not a model's, not the artifacts')."""
    return path.name != "artifacts" and not (path / "weights.npz").is_file()


def _created(child: Path, parent) -> Path:
    """A new child run under ``parent`` for the local child folder ``child``, which is renamed
    after it (a second sync then sends into that run instead of creating another)."""
    kept = read_json(child, "run.json")
    new = client().create_run(
        parent.info.experiment_id,
        run_name=kept.get("run_name"),
        tags={"mlflow.parentRunId": parent.info.run_id, "mlcore.unsent_id": child.name},
    )
    target = child.with_name(new.info.run_id)
    child.rename(target)
    return target


def _log_model(run_id: str, model: Path) -> str:
    kept = read_json(model, "model.json")
    if not kept or not (model / "input_example.npy").is_file():
        raise ValueError(
            f"{model}: kept by an mlcore that did not record the model's kind and input "
            "example; its weights.npz and code are there to load by hand"
        )
    code = PYFUNC_DIR / f"{kept['kind']}.py"
    if file_sha256(code) != kept["code_sha256"]:
        raise ValueError(
            f"{model}: the code of model kind {kept['kind']!r} ({code}) changed since the "
            "model was trained; sync it from the commit it was trained with"
        )
    with np.load(model / "weights.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    example = np.load(model / "input_example.npy", allow_pickle=False)
    return log_pyfunc_model(run_id, kept["kind"], arrays, example, model.name,
                            tuple(kept.get("extra_pip", ())))  # fmt: skip


def _rename_in_tags(folders: list[Path], model: Path, uri: str) -> None:
    """Every kept tag whose value is the model's folder (as the flow wrote it, from wherever
    it ran) names ``uri`` instead."""
    suffix = "/".join((UNSENT_DIR, *model.parts[-2:]))
    suffixes = {suffix, "/".join((UNSENT_DIR, *model.parts[-3:]))}
    for where in folders:
        path = where / "tags.json"
        if not path.is_file():
            continue
        tags = json.loads(path.read_text())
        renamed = {k: uri if any(str(v).endswith(s) for s in suffixes) else v
                   for k, v in tags.items()}  # fmt: skip
        if renamed != tags:
            path.write_text(json.dumps(renamed, indent=1))


def _send_run(where: Path, run_id: str) -> int:
    """Params, tags, metrics, datasets and artifacts of one run's folder; each file removed once
    sent. Returns the number of metric points."""
    mlflow_client = client()

    def send(kind: str, items: list) -> None:
        for start in range(0, len(items), BATCH[kind]):
            mlflow_client.log_batch(run_id, **{kind: items[start : start + BATCH[kind]]})

    if (path := where / "params.json").is_file():
        send("params", [Param(k, str(v)) for k, v in json.loads(path.read_text()).items()])
        path.unlink()
    if (path := where / "tags.json").is_file():
        send("tags", [RunTag(k, str(v)) for k, v in json.loads(path.read_text()).items()])
        path.unlink()
    points = 0
    if (path := where / "metrics.csv").is_file():
        with path.open() as rows:
            metrics = [Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"]))
                       for r in csv.DictReader(rows)]  # fmt: skip
        send("metrics", metrics)
        points = len(metrics)
        path.unlink()
    if (path := where / "datasets.json").is_file():
        for info in json.loads(path.read_text()).values():
            dataset = Dataset(name=info["name"], digest=info["digest"][:36], source_type="local",
                              source=json.dumps({"uri": info["source"]}))  # fmt: skip
            context = [InputTag(key="mlflow.data.context", value=info["context"])]
            mlflow_client.log_inputs(run_id, [DatasetInput(dataset=dataset, tags=context)])
        path.unlink()
    if (path := where / "artifacts").is_dir():
        mlflow_client.log_artifacts(run_id, str(path))
        shutil.rmtree(path)
    if (path := where / "end.json").is_file():  # the status the store could not be told
        if mlflow_client.get_run(run_id).info.status == "RUNNING":
            mlflow_client.set_terminated(run_id, json.loads(path.read_text())["status"])
        path.unlink()
    return points
