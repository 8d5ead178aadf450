"""The ``mlcore`` process's own settings, made once by ``flows.cli.main`` before any command
(and before Prefect, MLflow or numpy is imported): environment defaults and logger levels.
Importing ``flows.cli`` changes none of them."""

from __future__ import annotations

import logging
import os

# Set only where the user has not set them (os.environ.setdefault).
ENVIRONMENT_DEFAULTS = {
    # Before Prefect is imported: no telemetry, and time for the ephemeral API server to start
    # on a busy two-core machine.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # The terminal gets mlcore's own tables, progress bars and one-line errors; Prefect's
    # console log lines (a failed task's traceback among them) are off unless asked for, e.g.
    # PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=INFO. Every log still reaches the Prefect API and UI.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    # MLflow retries an unanswered HTTP request 7 times with back-off by default (minutes before
    # a dead tracking server is reported); the CLI checks the store before any work and
    # tolerates a short outage itself (tasks.tracking.MetricBuffer), so its requests retry
    # briefly.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # MLflow draws a progress bar for every artifact it downloads (mlcore sweep --resume reads
    # one)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

LOGGER_LEVELS = {
    # "Creating initial MLflow database tables...", "Validating input example against model
    # signature": noise on a terminal
    "mlflow.pyfunc": logging.WARNING,
    # ... and the SQLite store logs every "database is locked" it then retries as an ERROR with
    # a traceback; a retry that fails for good still raises, and that error is the one line
    # printed
    "mlflow.store.db.utils": logging.CRITICAL,
}


def set_up_process() -> None:
    """Apply ``ENVIRONMENT_DEFAULTS`` (keeping any value already set) and ``LOGGER_LEVELS``.
    ``main()`` calls it first; so do the tests that run the typer app in-process."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    for name, level in LOGGER_LEVELS.items():
        logging.getLogger(name).setLevel(level)
