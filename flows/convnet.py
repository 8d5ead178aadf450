"""Experiment 2: train the course's ThreeLayerConvNet, gated by a gradient check."""

from __future__ import annotations

from prefect import flow

from flows.experiments import CONVNET, nested_tags, register_best
from mlcore.data import DATASETS
from mlcore.data.images import class_names, image_shape
from tasks import tracking
from tasks.convnet import (
    evaluate_convnet,
    gradient_gate,
    load_images,
    train_convnet,
    training_started,
)
from tasks.data import fetch_cached
from tasks.registry import majority_baseline

D = CONVNET.defaults()
ARCHITECTURE = ("num_filters", "filter_size", "hidden_dim", "weight_scale", "reg")


@flow(name="convnet_training", log_prints=True)
def convnet_training(
    dataset: str = D["dataset"],
    epochs: int = D["epochs"],
    batch_size: int | None = D["batch_size"],
    lr: float | None = D["lr"],
    update_rule: str = D["update_rule"],
    lr_decay: float = D["lr_decay"],
    reg: float = D["reg"],
    hidden_dim: int | None = D["hidden_dim"],
    num_filters: int | None = D["num_filters"],
    filter_size: int | None = D["filter_size"],
    weight_scale: float | None = D["weight_scale"],
    num_train: int | None = D["num_train"],
    seed: int = D["seed"],
    resume: str | None = None,
    parent_run_id: str | None = None,
    run_tags: dict[str, str] | None = None,
    registry: bool = True,
    log_model: bool = True,
    gate: bool = True,
) -> dict:
    """load -> gradient gate on a tiny batch -> train with Solver -> evaluate on test -> log
    -> register. Architecture and optimiser parameters left as None take the dataset's
    defaults (flows.experiments.CONVNET).

    ``resume``: the MLflow run id of an unfinished run of this flow, to continue from its last
    checkpoint, in that same run; the other arguments must be the ones it was started with.
    ``parent_run_id`` nests the flow's MLflow run under another (a sweep's trial) and
    ``run_tags`` are set on it as it is created; ``registry=False`` leaves the model registry
    alone.

    ``log_model=False`` keeps what a sweep's trial needs (parameters, metrics, checkpoints)
    and skips the model and its plots (tag ``mlcore.model=skipped``); resuming that run later
    with ``log_model=True`` adds them without training (its last checkpoint is its end).
    ``gate=False`` skips the gradient gate, for a caller that ran :func:`gate` already on the
    same dataset and filter size (a sweep gates once for all its trials)."""
    call = dict(locals())
    for key in ("resume", "parent_run_id", "run_tags", "registry", "log_model", "gate"):
        call.pop(key)
    if resume is not None:
        recorded = tracking.resumable_params(
            resume, "convnet_training", finished_if=CONVNET.skipped_model_tag if log_model else None
        )
        changed = sorted(k for k in {*call, *recorded} if call.get(k) != recorded.get(k))
        if changed:
            raise ValueError(
                f"cannot resume run {resume} with other parameters: {changed[0]} was "
                f"{recorded.get(changed[0])!r}, now {call.get(changed[0])!r}"
            )
    values = CONVNET.resolve(call)
    config = architecture(**values)
    solver_config = solver_settings(values)
    resolved = {**config, **solver_config, "lr": values["lr"]}
    resolved.pop("optim_config")
    run = (
        tracking.parent_run(
            "convnet", "convnet_training", call, resolved, tags=nested_tags(parent_run_id, run_tags)
        )
        if resume is None
        else tracking.reopened_run(resume)
    )
    fresh = resume is None  # a new run: nothing logged yet to read back or check against
    with run as run_id:
        path = fetch_cached(dataset) if dataset in DATASETS else None  # digits ship with sklearn
        data = load_images(dataset, num_train, run_id, path, verify=not fresh)
        num_classes = len(class_names(dataset))
        # a resumed run that checkpointed passed its gate before
        if gate and (fresh or not training_started(run_id)):
            gradient_gate(
                data["X_train"].shape[1:], config["filter_size"], num_classes, seed, run_id
            )
        trained = train_convnet(data, num_classes, config, solver_config, seed, run_id, fresh=fresh)
        baseline = majority_baseline(data["y_train"], data["y_val"])
        result = evaluate_convnet(
            trained, data, run_id, log_model, extra_metrics={CONVNET.baseline_metric: baseline}
        )
        result["resumed_from_epoch"] = trained["resumed_from_epoch"]
        result["train_s"] = trained["train_s"]
        result["baseline"] = baseline
        result["registered"] = None
        if registry:
            result["registered"] = register_best(
                CONVNET, values, result["model_uri"], "best_val_acc", result["best_val_acc"],
                run_id, result["baseline"],
            )  # fmt: skip
        return result


def gate(values: dict, seed: int, run_id: str) -> None:
    """The gradient gate of the flow's networks for the parameters ``values`` (their dataset's
    image shape and classes, their filter size), its errors logged to ``run_id``: what each
    run of the flow with ``gate=True`` checks first. Raises GradientCheckError if it fails."""
    values = CONVNET.resolve(values)
    dataset = values["dataset"]
    gradient_gate(
        image_shape(dataset), values["filter_size"], len(class_names(dataset)), seed, run_id
    )


def architecture(**values) -> dict:
    """ThreeLayerConvNet's arguments for the flow parameters ``values`` (the rest: defaults)."""
    resolved = CONVNET.resolve(values)
    return {k: resolved[k] for k in ARCHITECTURE}


def solver_settings(values: dict) -> dict:
    """The Solver's keyword arguments for the resolved parameters ``values``."""
    return {
        "update_rule": values["update_rule"], "optim_config": {"learning_rate": values["lr"]},
        "lr_decay": values["lr_decay"], "batch_size": values["batch_size"],
        "num_epochs": values["epochs"], "num_train_samples": 1000,
    }  # fmt: skip
