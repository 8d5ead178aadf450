"""Experiment 2: train the course's ThreeLayerConvNet, gated by a gradient check."""

from __future__ import annotations

from prefect import flow

from mlcore.data import DATASETS
from mlcore.data.images import class_names
from tasks import tracking
from tasks.convnet import (
    evaluate_convnet,
    gradient_gate,
    load_images,
    model_config,
    train_convnet,
    training_config,
    training_started,
)
from tasks.data import fetch_dataset
from tasks.registry import (
    ACCURACY_MARGIN,
    convnet_data_key,
    majority_baseline,
    register_model,
)


@flow(name="convnet_training", log_prints=True)
def convnet_training(
    dataset: str = "digits",
    epochs: int = 10,
    batch_size: int | None = None,
    lr: float | None = None,
    update_rule: str = "adam",
    lr_decay: float = 1.0,
    reg: float = 0.0,
    hidden_dim: int | None = None,
    num_filters: int | None = None,
    filter_size: int | None = None,
    weight_scale: float | None = None,
    num_train: int | None = None,
    seed: int = 0,
    resume: str | None = None,
) -> dict:
    """load -> gradient gate on a tiny batch -> train with Solver -> evaluate on test -> log.
    Architecture and optimiser parameters left as None take the dataset's defaults
    (tasks.convnet.MODEL_DEFAULTS and TRAINING_DEFAULTS).

    ``resume``: the MLflow run id of an unfinished run of this flow, to continue from its last
    checkpoint, in that same run; the other arguments must be the ones it was started with."""
    call = dict(locals())
    call.pop("resume")
    if resume is not None:
        recorded = tracking.resumable_params(resume, "convnet_training")
        changed = sorted(k for k in {*call, *recorded} if call.get(k) != recorded.get(k))
        if changed:
            raise ValueError(
                f"cannot resume run {resume} with other parameters: {changed[0]} was "
                f"{recorded.get(changed[0])!r}, now {call.get(changed[0])!r}"
            )
    config = model_config(
        dataset, hidden_dim=hidden_dim, num_filters=num_filters, filter_size=filter_size,
        weight_scale=weight_scale, reg=reg,
    )  # fmt: skip
    training = training_config(dataset, lr=lr, batch_size=batch_size)
    solver_config = {
        "update_rule": update_rule, "optim_config": {"learning_rate": training["lr"]},
        "lr_decay": lr_decay, "batch_size": training["batch_size"], "num_epochs": epochs,
        "num_train_samples": 1000,
    }  # fmt: skip
    resolved = {**config, **solver_config}
    resolved.pop("optim_config")
    resolved["lr"] = training["lr"]
    run = (
        tracking.parent_run("convnet", "convnet_training", call, resolved)
        if resume is None
        else tracking.reopened_run(resume)
    )
    with run as run_id:
        path = fetch_dataset(dataset) if dataset in DATASETS else None  # digits ship with sklearn
        data = load_images(dataset, num_train, run_id, path)
        num_classes = len(class_names(dataset))
        if not training_started(run_id):  # a checkpoint means the gate passed before
            gradient_gate(
                data["X_train"].shape[1:], config["filter_size"], num_classes, seed, run_id
            )
        trained = train_convnet(data, num_classes, config, solver_config, seed, run_id)
        result = evaluate_convnet(trained, data, run_id)
        result["resumed_from_epoch"] = trained["resumed_from_epoch"]
        baseline = majority_baseline(data["y_train"], data["y_val"])
        result["registered"] = register_model(
            result["model_uri"], f"{dataset}-convnet", "best_val_acc", result["best_val_acc"],
            True, convnet_data_key(dataset, num_train), run_id, baseline, "majority",
            ACCURACY_MARGIN,
        )  # fmt: skip
        return result
