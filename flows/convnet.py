"""Experiment 2: train the course's ThreeLayerConvNet, gated by a gradient check."""

from __future__ import annotations

from prefect import flow

from mlcore.data import DATASETS
from mlcore.data.images import class_names
from tasks import tracking
from tasks.convnet import evaluate_convnet, gradient_gate, load_images, model_config, train_convnet
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
    batch_size: int = 50,
    lr: float = 1e-3,
    update_rule: str = "adam",
    lr_decay: float = 1.0,
    reg: float = 0.0,
    hidden_dim: int | None = None,
    num_filters: int | None = None,
    filter_size: int | None = None,
    weight_scale: float | None = None,
    num_train: int | None = None,
    seed: int = 0,
) -> dict:
    """load -> gradient gate on a tiny batch -> train with Solver -> evaluate on test -> log.
    Architecture parameters left as None take the dataset's defaults (tasks.convnet)."""
    call = dict(locals())
    config = model_config(
        dataset, hidden_dim=hidden_dim, num_filters=num_filters, filter_size=filter_size,
        weight_scale=weight_scale, reg=reg,
    )  # fmt: skip
    solver_config = {
        "update_rule": update_rule, "optim_config": {"learning_rate": lr}, "lr_decay": lr_decay,
        "batch_size": batch_size, "num_epochs": epochs, "num_train_samples": 1000,
    }  # fmt: skip
    resolved = {**config, **solver_config}
    resolved.pop("optim_config")
    with tracking.parent_run("convnet", "convnet_training", call, resolved) as run_id:
        path = fetch_dataset(dataset) if dataset in DATASETS else None  # digits ship with sklearn
        data = load_images(dataset, num_train, run_id, path)
        num_classes = len(class_names(dataset))
        gradient_gate(data["X_train"].shape[1:], config["filter_size"], num_classes, seed, run_id)
        trained = train_convnet(data, num_classes, config, solver_config, seed, run_id)
        result = evaluate_convnet(trained, data, run_id)
        baseline = majority_baseline(data["y_train"], data["y_val"])
        result["registered"] = register_model(
            result["model_uri"], f"{dataset}-convnet", "best_val_acc", result["best_val_acc"],
            True, convnet_data_key(dataset, num_train), run_id, baseline, "majority",
            ACCURACY_MARGIN,
        )  # fmt: skip
        return result
