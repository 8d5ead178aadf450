"""A sweep's Optuna study lives in Optuna's own storage: a ``JournalStorage`` file, kept in a
scratch folder while the sweep runs and logged with the sweep's MLflow run
(``sweep/study.journal``) before every batch of trials runs and when the sweep ends.

``--resume`` reads it back from the run, on any machine that reaches the tracking server, and
Optuna loads the study from it: every trial asked, its parameters, its state (RUNNING for a
trial that was lost or never told: it continues), its value, the grid's bookkeeping. Nothing is
replayed by hand; the journal is Optuna's own format, read by Optuna (never unpickled).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tasks import tracking

JOURNAL = "sweep/study.journal"
STUDY_NAME = "mlcore-sweep"
ERROR_ATTR = "mlcore.error"  # a failed trial's one-line error, kept with the trial in the study


def _storage(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def _download(run_id: str, path: Path) -> None:
    try:
        text = tracking.load_text(run_id, JOURNAL)
    except Exception as exc:  # noqa: BLE001 - MLflow's "no such artifact" has several types
        raise ValueError(
            f"--resume: the sweep {run_id} has no Optuna journal ({JOURNAL}); it was made by an "
            "mlcore older than its study storage and cannot be resumed"
        ) from exc
    path.write_text(text)


def logged_trials(run_id: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of the study logged with the sweep's run ``run_id``."""
    with journal(run_id, resuming=True) as book:
        study = optuna.load_study(study_name=STUDY_NAME, storage=book.storage)
        return study.get_trials(deepcopy=False)


class Journal:
    """The study of one sweep and its journal file (see the module's docstring)."""

    def __init__(self, run_id: str, path: Path):
        self.run_id, self.path = run_id, path
        self.saved = path.stat().st_size if path.exists() else 0
        self.storage = _storage(path)

    def asked(self) -> int:
        """How many trials the study holds (0 for a new one)."""
        if not self.path.exists() or not self.path.stat().st_size:
            return 0
        study_id = self.storage.get_study_id_from_name(STUDY_NAME)
        return len(self.storage.get_all_trials(study_id, deepcopy=False))

    def study(self, direction: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
        return optuna.create_study(
            study_name=STUDY_NAME, storage=self.storage, direction=direction, sampler=sampler,
            load_if_exists=True,
        )  # fmt: skip

    def set_error(self, number: int, error: str) -> None:
        """Keep a failed trial's one-line error with it (a resumed sweep's leaderboard shows
        it); set before the trial is told, while Optuna still lets its attributes change."""
        study_id = self.storage.get_study_id_from_name(STUDY_NAME)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.storage.set_trial_user_attr(trial_id, ERROR_ATTR, error)

    def save(self) -> None:
        """Log the journal with the sweep's run (during a tracking outage it is kept with the
        run's unsent records, as every artifact is), unless it is as last logged."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size != self.saved:
            tracking.log_text(self.run_id, self.path.read_text(), JOURNAL)
            self.saved = size


@contextlib.contextmanager
def journal(run_id: str, resuming: bool) -> Iterator[Journal]:
    """The sweep's journal in a scratch folder removed at the end: a new one, or for
    ``resuming`` the one logged with ``run_id``."""
    with tempfile.TemporaryDirectory(prefix="mlcore-study-") as folder:
        path = Path(folder) / "study.journal"
        if resuming:
            _download(run_id, path)
        yield Journal(run_id, path)
