"""Minibatch training of a classification model, following the cs231n Solver.

A model is anything with ``params`` (a dict of arrays) and ``loss(X, y=None)`` returning the
scores (N, C) without y and ``(loss, grads)`` with y. Progress leaves through an optional
callback, so callers can log it anywhere without this module knowing where.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np

from mlcore.nn import optim

UPDATE_RULES = ("sgd", "sgd_momentum", "rmsprop", "adam")
_DATA_KEYS = ("X_train", "y_train", "X_val", "y_val")
# A loss more than this many times its first value is a divergence. A classifier's first loss is
# about log(C) (2.3 for ten classes) plus the regulariser; minibatch noise and adam's early
# overshoot move it by a small factor (the highest loss of the course's overfitting cell on
# digits is 1.07x the first; tests/mlcore/nn/test_solver.py holds both ConvNet cells under
# 2x), while a learning rate too large by orders of magnitude sends it to thousands or more
# within a step or two (lr=1e4: 6e15 at the second iteration). 1e3 leaves a wide margin on both
# sides.
DEFAULT_DIVERGENCE_FACTOR = 1e3


class TrainingDiverged(FloatingPointError):
    """The loss became non-finite, or grew by more than ``divergence_factor`` over its first
    value. ``iteration`` (from 1), ``epoch`` (the epoch in progress, from 1) and ``loss`` say
    where."""

    def __init__(self, message: str, iteration: int, epoch: int, loss: float):
        super().__init__(message)
        self.iteration, self.epoch, self.loss = iteration, epoch, loss


class Solver:
    """Train ``model`` on ``data`` = dict(X_train, y_train, X_val, y_val).

    Keyword arguments (course defaults): update_rule ('sgd'; one of 'sgd', 'sgd_momentum',
    'rmsprop', 'adam', or a callable ``rule(w, dw, config) -> (next_w, config)``),
    optim_config ({}; copied for every parameter), lr_decay (1.0; learning rate multiplied by
    it after each epoch), batch_size (100), num_epochs (10; the total, also when resuming),
    num_train_samples (1000) and num_val_samples (None = all) used to estimate accuracies,
    checkpoint_name (None; otherwise ``{checkpoint_name}_epoch_{epoch}.npz`` after each
    epoch), print_every (10), verbose (True), plus:

    - checkpoint_seconds (0): with a checkpoint_name, an epoch's end writes a checkpoint only
      once at least this many seconds have passed since the last one (or since ``train()``
      began); the last epoch's end always writes one. 0 checkpoints every epoch. A killed
      run then loses at most about this much work, and short epochs do not pay a file write
      each. Which epochs are checkpointed never changes the training.

    - seed: seeds the one np.random.default_rng behind all sampling (minibatches and the
      accuracy subsamples), so two runs with the same seed are identical. None (the default)
      draws the seed from numpy's global generator, ``int(np.random.randint(2**31))`` (one
      draw, at construction; kept in ``self.seed``), so the course's ``np.random.seed(231)``
      gives the same training every time. An explicit seed leaves np.random untouched.
    - callback: ``callback(kind, info)``; after each iteration with kind "iteration" and
      info dict(iteration, epoch, loss) (iteration counts from 1; epoch is the number of
      completed epochs), and each time accuracies are recorded (after the first iteration and
      at every epoch end) with kind "epoch" and info dict(epoch, iteration, train_acc, val_acc,
      lr, checkpoint), where checkpoint says whether a checkpoint is written right after
      this event.
    - resume_from: path of a checkpoint written by a Solver; training continues from it.
    - divergence_factor (DEFAULT_DIVERGENCE_FACTOR = 1e3): training stops with
      TrainingDiverged at the first loss that is not finite or is more than this many times
      the first loss (a first loss of 0 only checks finiteness); None checks only finiteness.
      The diverging step's update is not applied. The callback also gets kind "checkpoint"
      with info dict(epoch, iteration, path) after each checkpoint is written.

    After ``train()`` the model holds the parameters with the best validation accuracy.
    """

    def __init__(self, model, data, **kwargs):
        missing = [k for k in _DATA_KEYS if k not in data]
        if missing:
            raise ValueError(f"data is missing {missing}; it needs keys {list(_DATA_KEYS)}")
        for split in ("train", "val"):
            X, y = data[f"X_{split}"], data[f"y_{split}"]
            if len(X) != len(y):
                raise ValueError(f"X_{split} has {len(X)} rows but y_{split} has {len(y)}")
            if len(X) == 0:
                raise ValueError(f"X_{split} is empty")
        self.model = model
        self.X_train, self.y_train = data["X_train"], data["y_train"]
        self.X_val, self.y_val = data["X_val"], data["y_val"]

        self.update_rule = kwargs.pop("update_rule", "sgd")
        self.optim_config = kwargs.pop("optim_config", {})
        self.lr_decay = kwargs.pop("lr_decay", 1.0)
        self.batch_size = kwargs.pop("batch_size", 100)
        self.num_epochs = kwargs.pop("num_epochs", 10)
        self.num_train_samples = kwargs.pop("num_train_samples", 1000)
        self.num_val_samples = kwargs.pop("num_val_samples", None)
        self.checkpoint_name = kwargs.pop("checkpoint_name", None)
        self.checkpoint_seconds = kwargs.pop("checkpoint_seconds", 0.0)
        self.print_every = kwargs.pop("print_every", 10)
        self.verbose = kwargs.pop("verbose", True)
        self.seed = kwargs.pop("seed", None)
        self.callback = kwargs.pop("callback", None)
        self.divergence_factor = kwargs.pop("divergence_factor", DEFAULT_DIVERGENCE_FACTOR)
        resume_from = kwargs.pop("resume_from", None)
        if kwargs:
            raise ValueError(f"unrecognized arguments: {', '.join(sorted(kwargs))}")

        if callable(self.update_rule):
            self._rule = self.update_rule
        elif self.update_rule in UPDATE_RULES:
            self._rule = getattr(optim, self.update_rule)
        else:
            raise ValueError(
                f"invalid update_rule {self.update_rule!r}; use one of {list(UPDATE_RULES)} "
                "or a callable"
            )
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1 or None, got {self.divergence_factor}")
        if not self.checkpoint_seconds >= 0:
            raise ValueError(f"checkpoint_seconds must be >= 0, got {self.checkpoint_seconds}")
        if self.batch_size < 1 or self.num_epochs < 0:
            raise ValueError(
                f"batch_size must be >= 1 and num_epochs >= 0, got {self.batch_size} and "
                f"{self.num_epochs}"
            )

        if self.seed is None:
            self.seed = int(np.random.randint(2**31))  # noqa: NPY002 - the course seeds it
        self._reset()
        if resume_from is not None:
            self.load_checkpoint(resume_from)

    def _reset(self):
        self.rng = np.random.default_rng(self.seed)
        self.epoch = 0
        self.iteration = 0
        self.best_val_acc = 0.0
        self.best_params = {}
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}

    def _step(self):
        batch = self.rng.choice(len(self.X_train), self.batch_size)
        loss, grads = self.model.loss(self.X_train[batch], self.y_train[batch])
        self._check_divergence(loss)
        self.loss_history.append(loss)
        for name, w in self.model.params.items():
            next_w, next_config = self._rule(w, grads[name], self.optim_configs[name])
            self.model.params[name] = next_w
            self.optim_configs[name] = next_config

    def _check_divergence(self, loss):
        first = self.loss_history[0] if self.loss_history else loss
        if np.isfinite(loss):
            factor = self.divergence_factor
            if factor is None or first <= 0 or loss <= factor * first:
                return
            why = f"more than divergence_factor={factor:g} times the first loss {first:.4g}"
        else:
            why = "not finite"
        iteration, epoch = self.iteration + 1, self.epoch + 1
        lr = next(iter(self.optim_configs.values()), {}).get("learning_rate")
        hint = f"; lower the learning rate ({lr:g})" if lr is not None else ""
        raise TrainingDiverged(
            f"training diverged at iteration {iteration} (epoch {epoch} of {self.num_epochs}): "
            f"loss {float(loss):.4g} is {why}{hint}",
            iteration,
            epoch,
            float(loss),
        )

    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        """Fraction of (a random subsample of num_samples of) X classified as y."""
        N = len(X)
        if num_samples is not None and N > num_samples:
            mask = self.rng.choice(N, num_samples)
            X, y, N = X[mask], y[mask], num_samples
        y_pred = [
            np.argmax(self.model.loss(X[i : i + batch_size]), axis=1)
            for i in range(0, N, batch_size)
        ]
        return float(np.mean(np.hstack(y_pred) == y))

    def train(self):
        """Run the optimisation until num_epochs epochs are complete."""
        # a diverging run overflows on its way to the non-finite loss that stops it: that is
        # reported as TrainingDiverged, not as numpy warnings
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self._train()

    def _train(self):
        iterations_per_epoch = max(len(self.X_train) // self.batch_size, 1)
        num_iterations = self.num_epochs * iterations_per_epoch
        self._last_checkpoint = time.monotonic()

        for t in range(self.iteration, num_iterations):
            self._step()
            self.iteration = t + 1
            loss = self.loss_history[-1]
            if self.verbose and t % self.print_every == 0:
                print(f"(Iteration {t + 1} / {num_iterations}) loss: {loss:f}")
            if self.callback is not None:
                self.callback("iteration", {"iteration": t + 1, "epoch": self.epoch, "loss": loss})

            epoch_end = (t + 1) % iterations_per_epoch == 0
            if epoch_end:
                self.epoch += 1
                for config in self.optim_configs.values():
                    if "learning_rate" in config:
                        config["learning_rate"] *= self.lr_decay
            checkpoint = epoch_end and self._checkpoint_due(t + 1 == num_iterations)
            if t == 0 or epoch_end:
                self._record_accuracy(checkpoint)
            if checkpoint:
                path = f"{self.checkpoint_name}_epoch_{self.epoch}.npz"
                self.save_checkpoint(path)
                self._last_checkpoint = time.monotonic()
                if self.callback is not None:
                    info = {"epoch": self.epoch, "iteration": self.iteration, "path": path}
                    self.callback("checkpoint", info)

        if self.best_params:
            self.model.params = {k: v.copy() for k, v in self.best_params.items()}

    def _checkpoint_due(self, last_epoch: bool) -> bool:
        if self.checkpoint_name is None:
            return False
        waited = time.monotonic() - self._last_checkpoint
        return last_epoch or waited >= self.checkpoint_seconds

    def _record_accuracy(self, checkpoint: bool = False):
        train_acc = self.check_accuracy(
            self.X_train, self.y_train, num_samples=self.num_train_samples
        )
        val_acc = self.check_accuracy(self.X_val, self.y_val, num_samples=self.num_val_samples)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        if self.verbose:
            print(
                f"(Epoch {self.epoch} / {self.num_epochs}) train acc: {train_acc:f}; "
                f"val_acc: {val_acc:f}"
            )
        if not self.best_params or val_acc > self.best_val_acc:
            self.best_val_acc = val_acc
            self.best_params = {k: v.copy() for k, v in self.model.params.items()}
        if self.callback is not None:
            lr = next(iter(self.optim_configs.values()), {}).get("learning_rate")
            info = {
                "epoch": self.epoch,
                "iteration": self.iteration,
                "train_acc": train_acc,
                "val_acc": val_acc,
                "lr": lr,
                "checkpoint": checkpoint,
            }
            self.callback("epoch", info)

    # ----------------------------------------------------------------------------------------
    # checkpoints: one .npz of plain arrays (no pickle), written atomically

    def save_checkpoint(self, path):
        """Write parameters, optimiser state, histories, counters and the rng state to path."""
        arrays = {
            "epoch": np.array(self.epoch),
            "iteration": np.array(self.iteration),
            "best_val_acc": np.array(self.best_val_acc),
            "loss_history": np.array(self.loss_history, dtype=np.float64),
            "train_acc_history": np.array(self.train_acc_history, dtype=np.float64),
            "val_acc_history": np.array(self.val_acc_history, dtype=np.float64),
            "rng_state": np.array(json.dumps(self.rng.bit_generator.state)),
        }
        for name, w in self.model.params.items():
            arrays[f"param/{name}"] = w
        for name, w in self.best_params.items():
            arrays[f"best/{name}"] = w
        for name, config in self.optim_configs.items():
            for key, value in config.items():
                value = np.asarray(value)
                if value.dtype == object:
                    raise ValueError(
                        f"cannot checkpoint optimizer state {name}/{key} of type "
                        f"{type(config[key]).__name__}: only arrays and scalars"
                    )
                arrays[f"optim/{name}/{key}"] = value

        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def load_checkpoint(self, path):
        """Restore the state saved by save_checkpoint into this solver and its model."""
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}

        params = {k[len("param/") :]: v for k, v in data.items() if k.startswith("param/")}
        expected = {k: np.shape(v) for k, v in self.model.params.items()}
        found = {k: v.shape for k, v in params.items()}
        if expected != found:
            raise ValueError(
                f"checkpoint {path} does not match the model: it holds parameters {found}, "
                f"the model has {expected}"
            )
        self.model.params = params
        self.best_params = {k[len("best/") :]: v for k, v in data.items() if k.startswith("best/")}

        self.optim_configs = {name: {} for name in params}
        for key, value in data.items():
            if key.startswith("optim/"):
                name, field = key[len("optim/") :].rsplit("/", 1)
                # 0-d arrays back to Python scalars, so they promote exactly as the originals
                self.optim_configs[name][field] = value.item() if value.ndim == 0 else value

        self.epoch = int(data["epoch"])
        self.iteration = int(data["iteration"])
        self.best_val_acc = float(data["best_val_acc"])
        self.loss_history = data["loss_history"].tolist()
        self.train_acc_history = data["train_acc_history"].tolist()
        self.val_acc_history = data["val_acc_history"].tolist()
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = json.loads(str(data["rng_state"]))
