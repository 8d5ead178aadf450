"""ConvNet steps: load images, gate on a gradient check, train with Solver, evaluate, log."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pooch
from prefect import task
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mlcore import metrics
from mlcore._validation import env_seconds
from mlcore.data.images import load_image_dataset
from mlcore.nn import Solver, ThreeLayerConvNet, TrainingDiverged
from mlcore.nn.checks import GradientCheckError, check_model
from mlcore.vis import plot_filter_grid, plot_training_curves
from tasks import tracking

GATE_THRESHOLD = 1e-5
GATE_ATTEMPTS = 3


@task
def load_images(
    dataset: str, num_train: int | None, run_id: str, path: str | None = None, verify: bool = True
) -> dict[str, np.ndarray]:
    """The dataset's train/val/test split (from the downloaded file at ``path`` for a dataset
    that has one), mean image of the whole training split subtracted; then, if given, only
    the first ``num_train`` training rows are kept (the course's overfitting cell does the
    same with the first 100 images of its preprocessed CIFAR-10).

    ``verify``: check the data against the sha256 the run recorded, if it has one (a resumed
    run must see its own data); a run just created has none, and its flow passes False."""
    data = _image_dataset(dataset, path)
    if num_train is not None:
        if not 1 <= num_train <= len(data["X_train"]):
            raise ValueError(f"num_train must be in [1, {len(data['X_train'])}], got {num_train}")
        data["X_train"], data["y_train"] = data["X_train"][:num_train], data["y_train"][:num_train]
    digest = data_sha256(data)
    recorded = tracking.client().get_run(run_id).data.tags.get(DATA_TAG) if verify else None
    if recorded is not None and recorded != digest:  # a resumed run must see its own data
        raise ValueError(
            f"run {run_id} was trained on other data (sha256 {recorded[:12]}..., now "
            f"{digest[:12]}...); it cannot be resumed"
        )
    sizes = {f"n_{s}": len(data[f"X_{s}"]) for s in ("train", "val", "test")}
    tracking.log_params(
        run_id, {**sizes, "input_dim": data["X_train"].shape[1:]}, tags={DATA_TAG: digest}
    )
    return data


CACHED_DATASET_BYTES = 64 << 20  # datasets up to this size are kept in memory once loaded
_LOADED: dict[tuple, dict[str, np.ndarray]] = {}


def _image_dataset(dataset: str, path: str | None) -> dict[str, np.ndarray]:
    """``load_image_dataset`` (a copy of each array): the last small dataset loaded (digits)
    is kept in memory, so a sweep's trials in one process parse its file once. Its key holds
    the file's size and modification time: a file replaced is loaded again."""
    stat = os.stat(path) if path else None
    key = (dataset, path, stat and (stat.st_size, stat.st_mtime_ns))
    data = _LOADED.get(key)  # (trials in threads: each holds its own reference)
    if data is None:
        data = load_image_dataset(dataset, **({"path": path} if path else {}))
        if sum(a.nbytes for a in data.values()) > CACHED_DATASET_BYTES:
            return data
        _LOADED.clear()
        _LOADED[key] = data
    return {k: a.copy() for k, a in data.items()}


DATA_TAG = "data.sha256"


def data_sha256(data: dict[str, np.ndarray]) -> str:
    """sha256 of the arrays a ConvNet learns and is selected on (train and val, with their
    dtypes and shapes): what "the same data" means for resuming a run."""
    h = hashlib.sha256()
    for key in ("X_train", "y_train", "X_val", "y_val"):
        a = np.ascontiguousarray(data[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


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
    """Solver callback: metrics to MLflow, each checkpoint to MLflow, and a progress bar on a
    terminal. Used as a context manager around ``solver.train()``: the progress bar shows
    inside it, and ``epoch_seconds`` (step = epoch) is the wall time from entering it, then
    from the end of the epoch before, to each epoch's end (its accuracies included; the
    checkpoint written after an epoch counts in the next one).

    Metrics go to MLflow in one batch with the first accuracies (after the first iteration,
    so a new run shows in the UI at once), at an epoch's end when ``FLUSH_SECONDS`` have
    passed since the last batch, and always right before a checkpoint is written (so a checkpoint
    never gets ahead of the metrics MLflow has), and when training ends: short epochs do not
    pay a database write each.

    A resumed run (or a retried task) goes again through steps it may have logged before it
    stopped. Those points are the same bits again, so the ones MLflow already has are
    skipped: each metric's history reads as one uninterrupted run's."""

    FLUSH_SECONDS = 2.0

    def __init__(
        self, run_id: str, total_iterations: int, done: int = 0, extra=None, fresh: bool = False
    ):
        self.run_id = run_id
        self.extra = extra
        self.metrics = tracking.MetricBuffer(run_id)
        # what MLflow has already (a run that logged nothing yet: ``fresh``, nothing to read)
        names = ["loss", "train_acc", "val_acc", "lr", "epoch_seconds"]
        self.logged = {} if fresh else tracking.last_metric_steps(run_id, names)
        self.epoch_started = None
        self.flushed: float | None = None  # the first accuracies are sent at once
        self.all_checkpoints_logged = True
        self.checkpoints_logged = 0  # by this training, to MLflow (not kept offline)
        console = Console(file=sys.stderr)
        self.progress = Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
            console=console, disable=not console.is_terminal,
        )  # fmt: skip
        self.task = self.progress.add_task(
            "train", total=total_iterations, completed=done, status=""
        )

    def __enter__(self) -> _TrainingDisplay:
        self.progress.__enter__()
        self.epoch_started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _add(self, name: str, value: float, step: int) -> None:
        if step > self.logged.get(name, -1):
            self.metrics.add(name, value, step)

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "iteration":
            self._add("loss", info["loss"], info["iteration"])
            self.progress.update(self.task, advance=1, status=f"loss {info['loss']:.3f}")
        elif kind == "epoch":
            if info["epoch"] >= 1:  # (not the accuracies recorded after the first iteration)
                now = time.perf_counter()
                self._add("epoch_seconds", now - self.epoch_started, info["epoch"])
                self.epoch_started = now
            for name in ("train_acc", "val_acc", "lr"):
                self._add(name, info[name], info["epoch"])
            due = self.flushed is None or time.monotonic() - self.flushed >= self.FLUSH_SECONDS
            if info["checkpoint"] or due:
                self.metrics.flush()
                self.flushed = time.monotonic()
            self.progress.update(
                self.task, status=f"epoch {info['epoch']} val_acc {info['val_acc']:.3f}"
            )
        elif kind == "checkpoint":
            self._checkpoint(Path(info["path"]), info["epoch"])
        if self.extra is not None:
            self.extra(kind, info)

    def _checkpoint(self, path: Path, epoch: int) -> None:
        """Log the new checkpoint; keep it and the one before on local disk too."""
        try:
            self.checkpoints_logged += tracking.log_checkpoint(self.run_id, path, epoch)
        except Exception as exc:  # noqa: BLE001 - the local file is the copy that matters now
            self.all_checkpoints_logged = False
            self.progress.console.print(
                f"checkpoint of epoch {epoch} kept at {path} (not logged to MLflow: "
                f"{tracking.error_line(exc)})",
                soft_wrap=True,
            )
        for old, _ in local_checkpoints(path.parent)[:-2]:
            old.unlink(missing_ok=True)


CHECKPOINT_PREFIX = "convnet"
_CHECKPOINT_FILE = re.compile(rf"^{CHECKPOINT_PREFIX}_epoch_(\d+)\.npz$")


DEFAULT_CHECKPOINT_SECONDS = 10.0


def checkpoint_seconds() -> float:
    """Seconds between two checkpoints of a training: ``$MLCORE_CHECKPOINT_SECONDS``, by
    default ``DEFAULT_CHECKPOINT_SECONDS``; 0 checkpoints every epoch. The last epoch is
    always checkpointed (``Solver``'s ``checkpoint_seconds``)."""
    return env_seconds("MLCORE_CHECKPOINT_SECONDS", DEFAULT_CHECKPOINT_SECONDS, zero=True)


def checkpoint_dir(run_id: str) -> Path:
    """Where a run's checkpoints are written: ``$MLCORE_CHECKPOINT_DIR/<run_id>``, by default
    ``./checkpoints/<run_id>``."""
    return Path(os.environ.get("MLCORE_CHECKPOINT_DIR") or "checkpoints") / run_id


def local_checkpoints(directory: Path) -> list[tuple[Path, int]]:
    """The checkpoint files in ``directory`` with their epochs, oldest first."""
    found = []
    if directory.is_dir():
        for f in directory.iterdir():
            m = _CHECKPOINT_FILE.match(f.name)
            if m:
                found.append((f, int(m.group(1))))
    return sorted(found, key=lambda item: item[1])


def latest_checkpoint(run_id: str) -> tuple[Path, int] | None:
    """The run's newest checkpoint as a local file and its epoch, or None if it has none.

    The newest one MLflow lists is used from the local directory when the file there is
    identical (same sha256), else downloaded (and checked); a local checkpoint newer than any
    in MLflow (its upload failed) is used as it is: the Solver writes it atomically."""
    directory = checkpoint_dir(run_id)
    local = local_checkpoints(directory)
    logged = tracking.logged_checkpoints(run_id)
    if local and (not logged or local[-1][1] > logged[-1]["epoch"]):
        return local[-1]
    for entry in reversed(logged):
        name = directory / Path(entry["artifact"]).name
        if name.is_file() and pooch.file_hash(str(name)) == entry["sha256"]:
            return name, entry["epoch"]
        directory.mkdir(parents=True, exist_ok=True)
        try:
            return tracking.download_checkpoint(run_id, entry, directory), entry["epoch"]
        except ValueError as exc:  # a damaged copy: the one before it is kept for this
            print(f"{exc}; trying the checkpoint before it")
    return None


def _retry_unless_diverged(task, task_run, state) -> bool:
    """A diverging loss diverges again from the same checkpoint: retry anything else."""
    return not isinstance(state.result(raise_on_failure=False), TrainingDiverged)


@task(retries=1, retry_condition_fn=_retry_unless_diverged)
def train_convnet(
    data: dict[str, np.ndarray],
    num_classes: int,
    config: dict[str, Any],
    solver_config: dict[str, Any],
    seed: int,
    run_id: str,
    callback: Callable[[str, dict], None] | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Train a ThreeLayerConvNet with Solver (per-iteration loss, per-epoch accuracies and
    ``epoch_seconds`` to MLflow), checkpointing every checkpoint_seconds() and at the last
    epoch into checkpoint_dir(run_id) and the run's artifacts. Starts from the run's latest
    checkpoint if it has one (a resumed run, a retried task), so it ends exactly where an
    uninterrupted run would. ``callback`` also gets every Solver event. Returns the model
    (best validation parameters) and its histories.

    ``fresh``: the run was created by the calling flow and holds no checkpoint or metric yet,
    so the task's first attempt reads nothing back from MLflow (a retry still does)."""
    from prefect.runtime import task_run

    every = checkpoint_seconds()
    model = ThreeLayerConvNet(
        input_dim=data["X_train"].shape[1:], num_classes=num_classes, seed=seed,
        dtype=np.float32, **config,
    )  # fmt: skip
    per_epoch = max(len(data["X_train"]) // solver_config["batch_size"], 1)
    directory = checkpoint_dir(run_id)
    directory.mkdir(parents=True, exist_ok=True)
    fresh = fresh and task_run.run_count <= 1  # (0: called outside a task run, as .fn)
    start = None if fresh else latest_checkpoint(run_id)
    if start is not None and start[1] < solver_config["num_epochs"]:
        print(f"resuming training from the checkpoint of epoch {start[1]} ({start[0]})")
        tracking.set_tags(run_id, {"mlcore.resumed_from_epoch": start[1]})
    display = _TrainingDisplay(
        run_id, per_epoch * solver_config["num_epochs"], per_epoch * (start[1] if start else 0),
        callback, fresh,
    )  # fmt: skip
    solver = Solver(
        model, data, **solver_config, seed=seed, callback=display, verbose=False,
        checkpoint_name=str(directory / CHECKPOINT_PREFIX), checkpoint_seconds=every,
        resume_from=start[0] if start else None,
    )  # fmt: skip
    try:
        with display:
            began = time.perf_counter()
            solver.train()
            train_s = time.perf_counter() - began
    finally:  # what a failing run did until it failed is worth keeping, if MLflow is there
        with contextlib.suppress(Exception):
            display.metrics.flush()
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty: a run that failed before its first checkpoint
    if display.all_checkpoints_logged and (
        display.checkpoints_logged or tracking.logged_checkpoints(run_id)
    ):
        shutil.rmtree(directory, ignore_errors=True)  # MLflow has the checkpoints
    return {
        "model": model,
        "loss_history": solver.loss_history,
        "train_acc_history": solver.train_acc_history,
        "val_acc_history": solver.val_acc_history,
        "best_val_acc": solver.best_val_acc,
        "resumed_from_epoch": start[1] if start else None,
        "train_s": train_s,  # Solver.train()'s wall time
    }


def training_started(run_id: str) -> bool:
    """Whether the run has a checkpoint (so its gradient gate passed before)."""
    return bool(tracking.logged_checkpoints(run_id) or local_checkpoints(checkpoint_dir(run_id)))


MODEL_TAG = "mlcore.model"  # "logged", or "skipped" (a sweep's trial: metrics only)


@task
def evaluate_convnet(
    trained: dict[str, Any],
    data: dict[str, np.ndarray],
    run_id: str,
    log_model: bool = True,
    extra_metrics: dict[str, float] | None = None,
) -> dict:
    """Test accuracy, the loss/accuracy curves and first-layer filters as PNGs, and the model
    as a pyfunc model (with ``log_model=False``: the accuracies only, ``model_uri`` None).
    ``extra_metrics`` (the flow's baseline) are logged with the accuracies, in one request."""
    model = trained["model"]
    result = {
        "test_acc": metrics.accuracy(data["y_test"], model.predict(data["X_test"])),
        "best_val_acc": trained["best_val_acc"],
        "final_train_acc": trained["train_acc_history"][-1],
    }
    skipped = {} if log_model else {MODEL_TAG: "skipped"}
    tracking.log_metrics(run_id, {**result, **(extra_metrics or {})}, tags=skipped)
    result["run_id"] = run_id
    if not log_model:
        result["model_uri"] = None
        return result
    curves = plot_training_curves(
        trained["loss_history"], trained["train_acc_history"], trained["val_acc_history"]
    )
    tracking.log_figure(run_id, curves, "plots/training_curves.png")
    tracking.log_figure(run_id, plot_filter_grid(model.params["W1"]), "plots/filters.png")
    arrays = {**model.params, "input_dim": np.asarray(model.input_dim)}
    result["model_uri"] = tracking.log_pyfunc_model(run_id, "convnet", arrays, data["X_test"][:5])
    tracking.set_tags(run_id, {MODEL_TAG: "logged"})
    return result
