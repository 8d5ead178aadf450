"""ConvNet steps: load images, gate on a gradient check, train with Solver, evaluate, log."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from prefect import task
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mlcore import metrics
from mlcore.data.images import load_image_dataset
from mlcore.nn import Solver, ThreeLayerConvNet
from mlcore.nn.checks import GradientCheckError, check_model
from mlcore.vis import plot_filter_grid, plot_training_curves
from tasks import tracking

# architecture defaults per dataset: the course's for CIFAR-10, a smaller net for 8x8 digits
MODEL_DEFAULTS = {
    "digits": {"num_filters": 16, "filter_size": 3, "hidden_dim": 64, "weight_scale": 0.1},
    "cifar10": {"num_filters": 32, "filter_size": 7, "hidden_dim": 100, "weight_scale": 1e-3},
}
# optimiser defaults per dataset: the course's CIFAR-10 settings; for the 1,197 8x8 digits a
# grid (lr 3e-3/1e-2/2e-2 x batch 25/50, adam, 3 epochs, seeds 0-2; README "Defaults that
# learn") chose lr 1e-2 with batch 25: val 0.96-0.97, test 0.963-0.967 after 3 epochs
TRAINING_DEFAULTS = {
    "digits": {"lr": 1e-2, "batch_size": 25},
    "cifar10": {"lr": 1e-3, "batch_size": 50},
}
GATE_THRESHOLD = 1e-5
GATE_ATTEMPTS = 3


def model_config(dataset: str, **overrides) -> dict[str, Any]:
    """The dataset's architecture defaults with every non-None override applied."""
    return _with_defaults(MODEL_DEFAULTS, dataset, overrides)


def training_config(dataset: str, **overrides) -> dict[str, Any]:
    """The dataset's optimiser defaults (``lr``, ``batch_size``) with every non-None override
    applied."""
    return _with_defaults(TRAINING_DEFAULTS, dataset, overrides)


def _with_defaults(table: dict, dataset: str, overrides: dict) -> dict[str, Any]:
    if dataset not in table:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(table)}")
    return {**table[dataset], **{k: v for k, v in overrides.items() if v is not None}}


@task
def load_images(
    dataset: str, num_train: int | None, run_id: str, path: str | None = None
) -> dict[str, np.ndarray]:
    """The dataset's train/val/test split (from the downloaded file at ``path`` for a dataset
    that has one), mean image of the whole training split subtracted; then, if given, only
    the first ``num_train`` training rows are kept (the course's overfitting cell does the
    same with the first 100 images of its preprocessed CIFAR-10)."""
    data = load_image_dataset(dataset, **({"path": path} if path else {}))
    if num_train is not None:
        if not 1 <= num_train <= len(data["X_train"]):
            raise ValueError(f"num_train must be in [1, {len(data['X_train'])}], got {num_train}")
        data["X_train"], data["y_train"] = data["X_train"][:num_train], data["y_train"][:num_train]
    sizes = {f"n_{s}": len(data[f"X_{s}"]) for s in ("train", "val", "test")}
    tracking.log_params(run_id, {**sizes, "input_dim": data["X_train"].shape[1:]})
    return data


@task
def gradient_gate(input_dim: tuple, filter_size: int, num_classes: int, seed: int, run_id: str):
    """Refuse to train a network whose gradients are wrong: check a tiny float64 net of the
    same input shape and filter size on two random images; log ``gate.rel_error.<param>``.

    A ReLU or max-pool kink within h of an input can spoil one numeric check of a correct
    net; a wrong gradient spoils every one. So the gate takes up to three random batches and
    passes on the first whose every error is within the threshold."""
    for attempt in range(GATE_ATTEMPTS):
        rng = np.random.default_rng([seed, attempt])
        model = ThreeLayerConvNet(
            input_dim=tuple(input_dim), num_filters=3, filter_size=filter_size, hidden_dim=7,
            num_classes=num_classes, weight_scale=0.1, dtype=np.float64,
            seed=int(rng.integers(1 << 31)),
        )  # fmt: skip
        X, y = rng.standard_normal((2, *input_dim)), rng.integers(num_classes, size=2)
        errors = check_model(model, X, y, h=1e-5)
        tracking.log_metrics(run_id, {f"gate.rel_error.{k}": v for k, v in errors.items()}, attempt)
        worst = max(errors, key=errors.get)
        if errors[worst] <= GATE_THRESHOLD:
            return errors
    raise GradientCheckError(
        f"gradient gate: {worst} rel error {errors[worst]:.2e} > {GATE_THRESHOLD:g} on "
        f"{GATE_ATTEMPTS} random batches; refusing to train"
    )


class _TrainingDisplay:
    """Solver callback: metrics to MLflow (flushed each epoch) and a progress bar on a terminal."""

    def __init__(self, run_id: str, total_iterations: int):
        self.metrics = tracking.MetricBuffer(run_id)
        console = Console(file=sys.stderr)
        self.progress = Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
            console=console, disable=not console.is_terminal,
        )  # fmt: skip
        self.task = self.progress.add_task("train", total=total_iterations, status="")

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "iteration":
            self.metrics.add("loss", info["loss"], info["iteration"])
            self.progress.update(self.task, advance=1, status=f"loss {info['loss']:.3f}")
            return
        for name in ("train_acc", "val_acc", "lr"):
            self.metrics.add(name, info[name], info["epoch"])
        self.metrics.flush()
        self.progress.update(
            self.task, status=f"epoch {info['epoch']} val_acc {info['val_acc']:.3f}"
        )


@task
def train_convnet(
    data: dict[str, np.ndarray],
    num_classes: int,
    config: dict[str, Any],
    solver_config: dict[str, Any],
    seed: int,
    run_id: str,
) -> dict[str, Any]:
    """Train a ThreeLayerConvNet with Solver (per-iteration loss, per-epoch accuracies to
    MLflow). Returns the model (best validation parameters) and its histories."""
    model = ThreeLayerConvNet(
        input_dim=data["X_train"].shape[1:], num_classes=num_classes, seed=seed,
        dtype=np.float32, **config,
    )  # fmt: skip
    per_epoch = max(len(data["X_train"]) // solver_config["batch_size"], 1)
    display = _TrainingDisplay(run_id, per_epoch * solver_config["num_epochs"])
    solver = Solver(model, data, **solver_config, seed=seed, callback=display, verbose=False)
    with display.progress:
        solver.train()
    display.metrics.flush()
    return {
        "model": model,
        "loss_history": solver.loss_history,
        "train_acc_history": solver.train_acc_history,
        "val_acc_history": solver.val_acc_history,
        "best_val_acc": solver.best_val_acc,
    }


@task
def evaluate_convnet(trained: dict[str, Any], data: dict[str, np.ndarray], run_id: str) -> dict:
    """Test accuracy, the loss/accuracy curves and first-layer filters as PNGs, and the model
    as a pyfunc model."""
    model = trained["model"]
    result = {
        "test_acc": metrics.accuracy(data["y_test"], model.predict(data["X_test"])),
        "best_val_acc": trained["best_val_acc"],
        "final_train_acc": trained["train_acc_history"][-1],
    }
    tracking.log_metrics(run_id, result)
    curves = plot_training_curves(
        trained["loss_history"], trained["train_acc_history"], trained["val_acc_history"]
    )
    tracking.log_figure(run_id, curves, "plots/training_curves.png")
    tracking.log_figure(run_id, plot_filter_grid(model.params["W1"]), "plots/filters.png")
    arrays = {**model.params, "input_dim": np.asarray(model.input_dim)}
    result["model_uri"] = tracking.log_pyfunc_model(
        run_id, "convnet", arrays, data["X_test"][:5], extra_pip=("mlcore",)
    )
    result["run_id"] = run_id
    return result
