"""``mlcore runs``: past runs read back with mlflow.search_runs, sorted, limited, and shown
whole at 80 columns on a terminal and in a pipe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app, fmt
from flows.compare import run_table
from tests.conftest import one_line_error

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*m")

LONG_PARAM = "optimizer_learning_rate_schedule_with_warm_restarts"
LONG_METRIC = "validation_mean_absolute_error_after_the_last_epoch"
PARAMS = [
    {LONG_PARAM: "cosine_annealing_with_warm_restarts_every_ten_epochs", "hidden_dim": "100",
     "dataset": "housing_scale"},
    {LONG_PARAM: "constant", "hidden_dim": "200", "dataset": "housing_scale"},
    {LONG_PARAM: "step_decay_by_a_factor_of_ten", "hidden_dim": "50", "dataset": "housing_scale"},
]  # fmt: skip
METRICS = [
    {LONG_METRIC: 3.14159265, "test_r2_of_the_refitted_model": 0.712345},
    {LONG_METRIC: 2.71828182, "test_r2_of_the_refitted_model": 0.698765},
    {"test_r2_of_the_refitted_model": 0.5},  # no LONG_METRIC: sorts last
]


@pytest.fixture
def experiment(mlflow_store):
    """Three finished flow runs (oldest first) with long param and metric names, and a child
    run of the first."""
    client = MlflowClient()
    exp = client.create_experiment("long_names")
    ids = []
    for params, metrics in zip(PARAMS, METRICS, strict=True):
        run = client.create_run(exp)
        for k, v in params.items():
            client.log_param(run.info.run_id, k, v)
        for k, v in metrics.items():
            client.log_metric(run.info.run_id, k, v)
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
        time.sleep(0.01)  # distinct start times
    child = client.create_run(exp, tags={"mlflow.parentRunId": ids[0]})
    client.log_metric(child.info.run_id, LONG_METRIC, 1.0)
    client.set_terminated(child.info.run_id)
    return {"ids": ids, "child": child.info.run_id, "uri": mlflow_store}


def test_run_table_sorts_limits_and_leaves_out_children(experiment):
    ids = experiment["ids"]
    rows, columns = run_table("long_names")
    assert [r["run_id"] for r in rows] == ids[::-1]  # newest first, no child
    assert columns == ["run_id", "start", "status", "dataset", "hidden_dim", LONG_PARAM,
                       "test_r2_of_the_refitted_model", LONG_METRIC]  # fmt: skip
    assert rows[0]["status"] == "FINISHED" and rows[0]["kind"] == "flow"
    assert LONG_METRIC not in rows[0]  # a run without a metric has no value, not NaN
    assert rows[1][LONG_METRIC] == 2.71828182 and rows[2][LONG_PARAM] == PARAMS[0][LONG_PARAM]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", rows[0]["start"])

    asc, _ = run_table("long_names", sort=LONG_METRIC)
    assert [r["run_id"] for r in asc] == [ids[1], ids[0], ids[2]]  # without it: last
    desc, _ = run_table("long_names", sort=LONG_METRIC, descending=True)
    assert [r["run_id"] for r in desc] == [ids[0], ids[1], ids[2]]
    top, _ = run_table("long_names", sort=LONG_METRIC, limit=1)
    assert [r["run_id"] for r in top] == [ids[1]]
    everything, columns = run_table("long_names", children=True)
    assert {r["run_id"] for r in everything} == {*ids, experiment["child"]}
    assert [r["kind"] for r in everything].count("child") == 1 and "kind" in columns
    with pytest.raises(ValueError, match=r"--sort: no run has metric 'nope' \(metrics: "):
        run_table("long_names", sort="nope")


def values_of(experiment) -> list[str]:
    return [
        *(v for p in PARAMS for k, v in p.items() if k != "dataset"),
        *(fmt(v) for m in METRICS for v in m.values()),
    ]


@pytest.mark.slow  # the installed mlcore in a subprocess
def test_runs_in_a_pipe_keep_every_value_whole(experiment, tmp_path):
    """The installed ``mlcore`` script, its output to a pipe, COLUMNS=80."""
    mlcore = Path(sys.executable).parent / "mlcore"
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR")}
    env.update(COLUMNS="80", MLFLOW_TRACKING_URI=experiment["uri"])
    done = subprocess.run(
        [str(mlcore), "runs", "long_names", "--sort", LONG_METRIC], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,  # stdout: a pipe
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "…" not in out and "..." not in out
    lines = out.splitlines()
    assert lines[0] == "MLflow experiment 'long_names'"
    # most important first; status and dataset are the same in all: in the last line
    assert lines[1].split() == ["run_id", LONG_METRIC, "test_r2_of_the_refitted_model",
                                "hidden_dim", LONG_PARAM, "start"]  # fmt: skip
    assert max(len(line) for line in lines) > 80  # a pipe has no width
    for run_id, line in zip(experiment["ids"][1::-1] + experiment["ids"][2:], lines[2:5],
                            strict=True):  # fmt: skip
        assert line.startswith(run_id + "  ")  # whole, in the --sort order
    for value in values_of(experiment):
        assert value in out, value
    assert lines[-1] == "same in all: status=FINISHED, dataset=housing_scale"


def test_runs_on_an_80_column_terminal_fit_and_keep_every_value_whole(experiment):
    listed = runner.invoke(
        app, ["runs", "long_names"], env={"COLUMNS": "80", "TTY_COMPATIBLE": "1"}
    )
    assert listed.exit_code == 0, listed.output
    out = ANSI.sub("", listed.output)
    lines = out.splitlines()
    assert "…" not in out and max(len(line) for line in lines) <= 80, out
    for value in [*values_of(experiment), *experiment["ids"]]:
        assert value in out, value  # too wide for a table: a block per run, ids whole
    # a key and value too long for one line: the value whole on the next
    at = lines.index(f"{LONG_PARAM}:")
    assert lines[at + 1] == "  " + PARAMS[2][LONG_PARAM]  # the newest run first
    assert f"  {PARAMS[0][LONG_PARAM]}" in lines
    assert lines[-1] == "same in all: status=FINISHED, dataset=housing_scale"


def test_runs_on_a_wide_terminal_are_a_table_with_the_first_id_whole(experiment):
    listed = runner.invoke(
        app,
        ["runs", "long_names", "--sort", LONG_METRIC, "--desc"],
        env={"COLUMNS": "250", "TTY_COMPATIBLE": "1"},
    )
    assert listed.exit_code == 0, listed.output
    out = ANSI.sub("", listed.output)
    lines = out.splitlines()
    assert "…" not in out and max(len(line) for line in lines) <= 250
    first, second, third = experiment["ids"]
    assert [line[:8] for line in lines[3:6]] == [first[:8], second[:8], third[:8]]
    assert second not in out  # shortened in the table ...
    assert lines[-1] == f"highest {LONG_METRIC}: run {first}"  # ... the first whole, last
    for value in values_of(experiment):
        assert value in out, value


def test_runs_sort_by_an_unknown_metric_is_one_line(experiment):
    one_line_error(
        runner.invoke(app, ["runs", "long_names", "--sort", "nope"]),
        rf"--sort: no run has metric 'nope' \(metrics: test_r2_\w+, {LONG_METRIC}\)$",
    )
