"""The ``mlcore`` command line: real flows, real MLflow store, one-line errors."""

import re

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app, parse_list

runner = CliRunner()


def one_line_error(result, pattern):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert re.search(pattern, lines[0]), lines[0]


def test_parse_list():
    assert parse_list("1e-4, 1e-2,1", float, "--alphas") == [1e-4, 1e-2, 1.0]
    assert parse_list(None, float, "--alphas") is None
    with pytest.raises(ValueError, match="--sgd-epochs: '2.5' is not a valid int"):
        parse_list("10,2.5", int, "--sgd-epochs")
    with pytest.raises(ValueError, match="--alphas: empty list"):
        parse_list(" , ", float, "--alphas")


def test_malformed_list_is_one_line(mlflow_store):
    one_line_error(
        runner.invoke(app, ["run", "housing", "--alphas", "1e-4,abc"]),
        r"error: --alphas: 'abc' is not a valid float",
    )


def test_unknown_experiment_is_one_line(mlflow_store):
    one_line_error(runner.invoke(app, ["runs", "nope"]), r"error: no MLflow experiment 'nope'")


def test_run_housing_then_compare_runs(prefect_harness, data_env, mlflow_store):
    args = ["run", "housing", "--alphas", "1e-4,10", "--sgd-lr", "0.01", "--sgd-epochs", "30"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run_id = re.search(r"MLflow run id: (\w{32})", result.output).group(1)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["alphas"] == "0.0001,10.0"
    assert "ridge" in result.output and "val_mae" in result.output

    listed = runner.invoke(
        app, ["runs", "housing", "--sort", "best_val_mae"], env={"COLUMNS": "300"}
    )
    assert listed.exit_code == 0, listed.output
    assert run_id[:12] in listed.output and "FINISHED" in listed.output
    children = runner.invoke(app, ["runs", "housing", "--children"], env={"COLUMNS": "300"})
    assert children.output.count("child") == 4  # ols, two ridges, one sgd
    one_line_error(
        runner.invoke(app, ["runs", "housing", "--sort", "nope"]),
        r"error: --sort: no run has metric 'nope'",
    )
