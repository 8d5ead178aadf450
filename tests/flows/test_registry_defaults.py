"""One default changed in the experiment registry shows everywhere: ``mlcore run --help``, a sweep
trial's logged parameters, ``mlcore rerun`` and the prefect.yaml check."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# In a fresh interpreter, before any flow is imported: the ConvNet's epochs default 10 -> 2.
SCRIPT = r"""
import json, re, sys
import yaml
from flows import experiments
experiments.CONVNET.param("epochs").default = 2

from mlflow import MlflowClient
from typer.testing import CliRunner
from flows.cli import app
from flows.sweep import run_sweep
from tasks import tracking

runner, client, out = CliRunner(), MlflowClient(), {}
out["help"] = runner.invoke(app, ["run", "convnet", "--help"], env={"COLUMNS": "200"}).output
small = {"num_train": 50, "num_filters": 2, "hidden_dim": 4, "batch_size": 50, "lr": 0.01}
sweep = run_sweep("convnet", ["reg=0"], set_=[f"{k}={v}" for k, v in small.items() if k != "lr"])
trial = client.get_run(sweep["trials"][0]["run_id"])
out["trial_epochs"] = trial.data.params["epochs"]
out["trial_steps"] = len(client.get_metric_history(trial.info.run_id, "val_acc"))
# a run recorded before `epochs` was a parameter: its rerun takes the registry's default
with tracking.parent_run("convnet", "convnet_training", small) as old:
    pass
rerun = runner.invoke(app, ["rerun", old, "--set", "seed=3"])
out["rerun_output"] = rerun.output
new = re.search(r"is MLflow run (\w+)", rerun.output).group(1)
out["rerun_epochs"] = client.get_run(new).data.params["epochs"]
from flows.deployments import deployment_problems
out["yaml"] = deployment_problems(yaml.safe_load(open(sys.argv[1])))
print("RESULT " + json.dumps(out))
"""


def test_a_changed_default_reaches_every_command(prefect_harness, mlflow_store, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the session's test server
        "MLCORE_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO / "prefect.yaml")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    epochs_help = next(x for x in out["help"].splitlines() if "--epochs" in x)
    assert "[default: (2)]" in epochs_help, out["help"]
    assert out["trial_epochs"] == "2" and out["trial_steps"] == 2
    assert out["rerun_epochs"] == "2", out["rerun_output"]
    assert out["yaml"] == ["deployment 'weekly': epochs is 10, the registry's default is 2"]
