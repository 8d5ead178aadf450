"""The one place that talks to MLflow: runs, tags, params, metrics, artifacts and models.

One module per concern, all of it importable from here (``from tasks import tracking``):

- `store`        the tracking URI, a client, and whether the store is there
- `runs`         a flow's run and its children: start, reopen, end
- `logging`      params, tags, metrics (`MetricBuffer`), figures, tables, JSON, datasets
- `spool`        what a store that went away could not take (``./mlcore-unsent/``)
- `ownership`    which process owns a RUNNING run; reaping runs whose process is gone
- `models`       pyfunc models from code
- `checkpoints`  training checkpoints as artifacts
- `resume`       whether a stopped run may be resumed, and from where
- `provenance`   the code's commit and the Prefect flow run

Importing it changes nothing process-wide (no matplotlib backend, no environment).
"""

from mlflow.entities import RunStatus

from tasks.errors import error_line
from tasks.tracking.checkpoints import (
    CHECKPOINT_DIR,
    CHECKPOINT_TAG,
    download_checkpoint,
    log_checkpoint,
    logged_checkpoints,
)
from tasks.tracking.logging import (
    MetricBuffer,
    load_json,
    load_text,
    log_dataframe,
    log_dataset,
    log_figure,
    log_json,
    log_metric_history,
    log_metrics,
    log_params,
    log_table,
    log_text,
    set_tags,
)
from tasks.tracking.models import (
    PYFUNC_DIR,
    _load_code_model,
    file_sha256,
    log_pyfunc_model,
    model_requirements,
)
from tasks.tracking.ownership import (
    ERROR_TAG,
    HOST_TAG,
    PID_TAG,
    _precise_start,
    _process_start,
    end_own_runs,
    mark_process,
    process_tags,
    reap_dead_runs,
    reap_if_dead,
)
from tasks.tracking.provenance import PROJECT_DIR, git_commit
from tasks.tracking.resume import last_metric_steps, resumable_params
from tasks.tracking.runs import (
    child_run,
    child_runs,
    end_orphaned_children,
    end_run,
    parent_run,
    reopened_run,
)
from tasks.tracking.spool import UNSENT_DIR, TrackingUnavailable
from tasks.tracking.store import (
    client,
    experiment_id,
    sqlite_path,
    tracking_store_error,
    tracking_uri,
    use_tracking_uri,
)

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_TAG",
    "ERROR_TAG",
    "HOST_TAG",
    "PID_TAG",
    "PROJECT_DIR",
    "PYFUNC_DIR",
    "UNSENT_DIR",
    "MetricBuffer",
    "RunStatus",
    "TrackingUnavailable",
    "_load_code_model",
    "_precise_start",
    "_process_start",
    "child_run",
    "child_runs",
    "client",
    "sqlite_path",
    "download_checkpoint",
    "end_orphaned_children",
    "end_own_runs",
    "end_run",
    "error_line",
    "experiment_id",
    "file_sha256",
    "git_commit",
    "last_metric_steps",
    "load_json",
    "load_text",
    "log_checkpoint",
    "log_dataframe",
    "log_dataset",
    "log_figure",
    "log_json",
    "log_metric_history",
    "log_metrics",
    "log_params",
    "log_pyfunc_model",
    "log_table",
    "log_text",
    "logged_checkpoints",
    "mark_process",
    "model_requirements",
    "parent_run",
    "process_tags",
    "reap_dead_runs",
    "reap_if_dead",
    "reopened_run",
    "resumable_params",
    "set_tags",
    "tracking_store_error",
    "tracking_uri",
    "use_tracking_uri",
]
