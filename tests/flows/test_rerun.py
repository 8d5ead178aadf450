"""``mlcore rerun``: a past flow run run again from MLflow, reproducing its metrics exactly;
``--set`` parsing; one-line errors."""

import json
import platform
import re

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from flows.compare import metric_columns, plot_metric, run_table
from flows.housing import housing_regression
from flows.params import parse_overrides
from tasks import environment, tracking
from tests.conftest import one_line_error

pytestmark = pytest.mark.slow

runner = CliRunner()
ENV = {"COLUMNS": "300"}
SMALL = {"alphas": [1e-4, 1.0], "sgd_lrs": [0.01], "sgd_epochs": [50]}


def test_rerun_reproduces_exactly_then_reports_a_changed_parameter(
    prefect_harness, data_env, mlflow_store
):
    original = housing_regression(**SMALL)
    client = MlflowClient()
    before = client.get_run(original["run_id"])

    same = runner.invoke(app, ["rerun", original["run_id"]], env=ENV)
    assert same.exit_code == 0, same.output
    new_id = re.search(r"rerun of \w{32} is MLflow run (\w{32})", same.output).group(1)
    assert "reproduced exactly" in same.output and "differ" not in same.output
    count = len(environment.packages())
    assert f"same environment (python and {count} package versions)" in same.output
    again = client.get_run(new_id)
    for tag in ("env.python", "env.lock_sha256", "env.lock_source"):
        assert again.data.tags[tag] == before.data.tags[tag]
    assert again.data.tags["mlcore.rerun_of"] == original["run_id"]
    assert again.data.tags["mlcore.flow_params"] == before.data.tags["mlcore.flow_params"]
    assert again.data.tags["data.sha256"] == before.data.tags["data.sha256"]
    assert again.data.metrics == before.data.metrics  # every metric, exactly
    assert len(before.data.metrics) >= 7

    changed = runner.invoke(app, ["rerun", original["run_id"], "--set", "alphas=1,10"], env=ENV)
    assert changed.exit_code == 0, changed.output
    assert "changed parameter alphas: [0.0001, 1.0] -> [1.0, 10.0]" in changed.output
    assert "reproduced exactly" not in changed.output
    new_id = re.search(r"rerun of \w{32} is MLflow run (\w{32})", changed.output).group(1)
    rerun = client.get_run(new_id)
    assert json.loads(rerun.data.tags["mlcore.flow_params"])["alphas"] == [1.0, 10.0]
    assert rerun.data.params["alphas"] == "1.0,10.0"
    assert rerun.data.tags["mlcore.rerun_of"] == original["run_id"]
    # ridge alpha=1e-4 is nearly OLS, so a different grid need not change the best model;
    # whatever differs is listed with both values
    for name, value in rerun.data.metrics.items():
        if value != before.data.metrics.get(name):
            assert re.search(rf"{re.escape(name)}\s.*{re.escape(repr(value))}", changed.output)

    # the three runs compared in a bar chart of one metric
    png = data_env.parent / "runs.png"
    listed = runner.invoke(
        app, ["runs", "housing", "--sort", "best_val_mae", "--plot", str(png)], env=ENV
    )
    assert listed.exit_code == 0, listed.output
    assert f"plot of best_val_mae written to {png}" in listed.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows, columns = run_table("housing", sort="best_val_mae")
    values = [r["best_val_mae"] for r in rows]
    assert values == sorted(values)
    down = run_table("housing", sort="best_val_mae", descending=True)[0]
    assert [r["best_val_mae"] for r in down] == sorted(values, reverse=True)
    fig = plot_metric(rows, "best_val_mae", "t")
    (ax,) = fig.axes
    assert [b.get_height() for b in ax.patches] == [r["best_val_mae"] for r in rows]
    assert [t.get_text() for t in ax.get_xticklabels()] == [r["run_id"][:8] for r in rows]
    assert len(rows) == 3 and "best_val_mae" in metric_columns(rows, columns)
    one_line_error(
        runner.invoke(app, ["runs", "housing", "--plot", str(png), "--metric", "nope"], env=ENV),
        r"error: --metric: no run has metric 'nope' \(metrics: baseline_val_mae, best_test_mae, ",
    )

    # the original claims other data, other code and another environment (an older numpy,
    # no scipy, a package not installed here, another Python): the rerun says what differs.
    # (Not torch: make bench installs it into .venv.)
    client.set_tag(original["run_id"], "data.sha256", "0" * 64)
    client.set_tag(original["run_id"], "git_commit", "1" * 40)
    client.set_tag(original["run_id"], "env.python", "3.10.4")
    pkgs = dict(environment.packages())
    numpy_now, scipy_now = pkgs["numpy"], pkgs.pop("scipy")
    assert "mlcore-retired-helper" not in pkgs
    pkgs.update({"numpy": "1.26.4", "mlcore-retired-helper": "2.13.0+cpu"})
    client.log_text(original["run_id"], environment.freeze_text(pkgs), environment.FREEZE_ARTIFACT)
    other = runner.invoke(app, ["rerun", original["run_id"]], env=ENV)
    assert other.exit_code == 0, other.output
    assert f"data differs: {'0' * 64} -> {before.data.tags['data.sha256']}" in other.output
    assert f"code differs: {'1' * 40} -> " in other.output
    assert f"python differs: 3.10.4 -> {platform.python_version()}" in other.output
    assert "environment differs: 3 packages" in other.output
    assert "same environment" not in other.output
    assert re.search(rf"numpy\s.*1\.26\.4\s.*{re.escape(numpy_now)}", other.output)
    assert re.search(rf"scipy\s.*\(absent\)\s.*{re.escape(scipy_now)}", other.output)
    assert re.search(r"mlcore-retired-helper\s.*2\.13\.0\+cpu\s.*\(absent\)", other.output)
    assert "reproduced exactly" not in other.output and "every metric is the same" in other.output

    # a value the parser refuses never starts the flow
    refused = runner.invoke(app, ["rerun", original["run_id"], "--set", "sgd_lrs=-1"], env=ENV)
    one_line_error(refused, r"error: --set sgd_lrs: -1.0 must be > 0")
    # a rerun whose flow fails: its run is FAILED and still says what it reran
    failed = runner.invoke(app, ["rerun", original["run_id"], "--set", "dataset=nope"], env=ENV)
    one_line_error(failed, r"error: unknown dataset 'nope'; known datasets: ")
    (last,) = client.search_runs(
        [before.info.experiment_id], "attributes.status = 'FAILED'", max_results=1
    )
    assert last.data.tags["mlcore.rerun_of"] == original["run_id"]


def test_parse_overrides_uses_the_registry():
    from flows.experiments import CONVNET, GRADCHECK, HOUSING

    assert parse_overrides(HOUSING, ["alphas=1,10", "seed=3", "val_split=0.25"]) == {
        "alphas": [1.0, 10.0],
        "seed": 3,
        "val_split": 0.25,
    }
    assert parse_overrides(HOUSING, ["sgd_epochs=[5, 10]"]) == {"sgd_epochs": [5, 10]}
    assert parse_overrides(HOUSING, ["standardize=false"]) == {"standardize": False}
    assert parse_overrides(CONVNET, ["hidden_dim=none", "num_train=400"]) == {
        "hidden_dim": None,
        "num_train": 400,
    }
    assert parse_overrides(GRADCHECK, ["layers=affine,relu"]) == {"layers": ["affine", "relu"]}
    with pytest.raises(ValueError, match=r"--set layers: 'nope' is not one of affine"):
        parse_overrides(GRADCHECK, ["layers=affine,nope"])
    with pytest.raises(ValueError, match=r"--set sgd_epochs: '2.5' is not a valid int"):
        parse_overrides(HOUSING, ["sgd_epochs=10,2.5"])


@pytest.fixture
def flow_run(mlflow_store):
    """A parent run as the housing flow tags it (the flow itself need not run to be refused)."""
    with tracking.parent_run("housing", "housing_regression", {"alphas": [1.0], "seed": 1}) as rid:
        pass
    return rid


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--set", "nope=1"], r"error: --set: housing_regression has no parameter 'nope'; known: "),
        (["--set", "alphas"], r"error: --set: expected key=value, got 'alphas'"),
        (["--set", "seed=abc"], r"error: --set seed: 'abc' is not a valid int"),
        (["--set", "alphas=1,x"], r"error: --set alphas: 'x' is not a valid float"),
    ],
)
def test_bad_set_is_one_line(flow_run, args, pattern):
    one_line_error(runner.invoke(app, ["rerun", flow_run, *args], env=ENV), pattern)


def test_unknown_and_foreign_runs_are_one_line(flow_run):
    one_line_error(
        runner.invoke(app, ["rerun", "0" * 32], env=ENV), r"error: no MLflow run '0{32}' in sqlite"
    )
    client = MlflowClient()
    foreign = client.create_run(tracking.experiment_id("housing")).info.run_id
    one_line_error(
        runner.invoke(app, ["rerun", foreign], env=ENV),
        rf"error: run {foreign} was not made by an mlcore flow \(no mlcore.flow tag\)",
    )
    with tracking.child_run(flow_run, "child", {}) as child:
        pass
    one_line_error(
        runner.invoke(app, ["rerun", child], env=ENV),
        rf"error: run {child} is a child run of flow run {flow_run}; rerun that",
    )
