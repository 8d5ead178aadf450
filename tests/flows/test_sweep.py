"""mlcore sweep: search-space errors, housing sweeps on every local runner read back from MLflow,
seeded samplers, the registry."""

import json
import os
import socket

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from flows.space import make_sampler, parse_space
from flows.sweep import run_sweep
from tasks.registry import housing_data_key
from tasks.sweep import trial_seed
from tests.conftest import one_line_error

pytestmark = pytest.mark.slow

runner = CliRunner()


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["housing", "--param", "alpha"], r"--param: expected NAME=SPEC, got 'alpha'"),
        (["housing", "--param", "beta=1,2"], r"housing has no parameter 'beta'"),
        (["housing", "--param", "alpha=1,x"], r"--param alpha: 'x' is not a valid float"),
        (["housing", "--param", "alpha=1e-4..1:log", "--sampler", "grid"], r"alpha is a range"),
        (["housing", "--param", "alpha=2..1", "--sampler", "tpe"], r"range 2.0..1.0 is empty"),
        (["housing", "--param", "alpha=0..1:log", "--sampler", "tpe"], r":log range must be pos"),
        (["housing", "--param", "alpha=0..1:cube", "--sampler", "random"], r"flag 'cube'"),
        (["housing", "--param", "model=ols,lasso"], r"'lasso' is not one of ols, ridge, sgd"),
        (["housing", "--param", "alpha=1,1"], r"alpha: a value is listed twice"),
        (["housing", "--param", "test_size=0.2,0.3"], r"fix it with --set test_size=VALUE"),
        (["housing", "--param", "alpha=1,2", "--set", "alpha=3"], r"alpha is swept by --param"),
        (["housing", "--param", "alpha=1,2", "--trials", "3"], r"grid has only 2 points"),
        (["housing", "--param", "alpha=1,2", "--metric", "test_mae"], r"'test_mae' is not a m"),
        (["housing", "--param", "alpha=1,2", "--runner", "ray"], r"--runner: 'ray' is not one"),
        (
            [
                "housing",
                "--param",
                "alpha=1,2",
                "--dask-address",
                "tcp://127.0.0.1:1",
                "--runner",
                "threads",
            ],
            r"--dask-address runs the trials on that Dask cluster: drop --runner threads$",
        ),  # fmt: skip
        (
            ["housing", "--param", "alpha=1,2", "--runner", "sequential", "--workers", "2"],
            r"--workers 2: --runner sequential runs one trial at a time",
        ),  # fmt: skip
        (["convnet", "--param", "hidden_dim=8,x"], r"hidden_dim: 'x' is not a valid int"),
        (["convnet", "--param", "update_rule=adam,adagrad"], r"'adagrad' is not one of sgd"),
        (["convnet", "--param", "seed=1,2"], r"seeded from --seed and the trial number"),
        (["mnist", "--param", "lr=1,2"], r"unknown experiment 'mnist'"),
        (["--param", "lr=1,2"], r"give the EXPERIMENT to sweep"),
        (["--resume", "0" * 32], r"--resume: no MLflow run '0{32}'"),
    ],
)
def test_bad_sweep_specs_are_one_line_errors(mlflow_store, args, pattern):
    one_line_error(runner.invoke(app, ["sweep", *args]), pattern)


def test_search_space_specs_become_optuna_distributions():
    space = parse_space(
        "convnet",
        ["lr=1e-4..1e-1:log", "hidden_dim=32..256", "reg=0..0.5", "update_rule=adam,sgd"],
    )
    assert space["lr"].low == 1e-4 and space["lr"].high == 0.1 and space["lr"].log
    assert type(space["hidden_dim"]).__name__ == "IntDistribution"
    assert (space["hidden_dim"].low, space["hidden_dim"].high) == (32, 256)
    assert not space["reg"].log and space["update_rule"].choices == ("adam", "sgd")
    # the flow's list parameters name the same trial parameter
    assert parse_space("housing", ["alphas=1,10"])["alpha"].choices == (1.0, 10.0)
    assert parse_space("housing", ["sgd_epochs=5,10"])["epochs"].choices == (5, 10)


def test_housing_sweeps_fit_standardized_or_as_downloaded(housing):
    """--set standardize=false: every trial fits on the features as downloaded, so ridge
    alpha 1e-4 gives the course's printed errors (docs/experiments.md)."""
    from flows.experiments import HOUSING
    from flows.space import flow_arguments, parse_fixed
    from mlcore.metrics import mean_absolute_error
    from tasks.data import standardize
    from tasks.linear import fit_model

    assert parse_fixed("housing", [], {})["standardize"] is True
    fixed = parse_fixed("housing", ["standardize=false"], {})
    assert fixed["standardize"] is False
    with pytest.raises(ValueError, match=r"--set standardize: 'maybe' is not a valid bool"):
        parse_fixed("housing", ["standardize=maybe"], {})
    # a trial sweeping alpha runs the flow with one ridge alpha, as downloaded
    args = flow_arguments(HOUSING, {"alpha": 1e-4}, fixed)
    assert args["models"] == ["ridge"] and args["alphas"] == [1e-4]
    assert args["standardize"] is False
    data, _ = standardize.fn(housing, enabled=args["standardize"])
    model = fit_model.fn("ridge", {"alpha": args["alphas"][0]}, data)
    mae = mean_absolute_error(data["y_test"], model.predict(data["X_test"]))
    assert mae == pytest.approx(3.0851716338615383, rel=1e-9)


def test_trial_seeds_depend_on_the_sweep_seed_and_the_trial_number_only():
    seeds = {trial_seed(s, n) for s in range(3) for n in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**31 for s in seeds)
    assert trial_seed(7, 3) == trial_seed(7, 3)


def course_ridge_val_mae(housing, alpha):
    """The course's ridge, W* = (XᵀX + αI)⁻¹Xᵀy with a ones column, on standardized rows."""
    mean, std = housing["X_train"].mean(0), housing["X_train"].std(0)
    std[std == 0] = 1

    def design(X):
        return np.hstack([(X - mean) / std, np.ones((len(X), 1))])

    A = design(housing["X_train"])
    W = np.linalg.solve(A.T @ A + alpha * np.eye(A.shape[1]), A.T @ housing["y_train"])
    return float(np.mean(np.abs(design(housing["X_val"]) @ W - housing["y_val"])))


def trial_runs(parent_run_id):
    client = MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {int(r.data.tags["mlcore.trial"]): r for r in runs}


ALPHAS = [1e-4, 1.0, 10.0, 100.0]


def test_the_sweeps_plots_leave_out_a_parameter_that_did_not_vary(mlflow_store):
    """A parameter every trial had the same value of gets no slice plot (an empty axis) and
    no importance; the ones that varied do, and Optuna warns about nothing."""
    import warnings

    import optuna

    from tasks import tracking
    from tasks.sweep import _log_plots

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for a in (0.1, 0.5, 0.9, 0.3):
        trial = study.ask({"a": optuna.distributions.FloatDistribution(0, 1),
                           "b": optuna.distributions.CategoricalDistribution([7])})  # fmt: skip
        study.tell(trial, a * a)
    with tracking.parent_run("sweeps", "hyperparameter_sweep", {}) as run_id:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            _log_plots(run_id, study, "m")
    run = MlflowClient().get_run(run_id)
    assert {k for k in run.data.metrics if k.startswith("importance.")} == {"importance.a"}
    plots = {a.path for a in MlflowClient().list_artifacts(run_id, "plots")}
    assert plots == {"plots/m_vs_params.png", "plots/param_importances.png"}


def test_importances_optuna_cannot_tell_apart_are_not_logged(mlflow_store):
    """Two trials with the same result: Optuna's evaluator warns that it cannot tell the
    parameters apart. The sweep says so in a tag and logs no importance (numbers that say
    nothing), and no warning reaches the user's terminal."""
    import warnings

    import optuna

    from tasks import tracking
    from tasks.sweep import _log_plots

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(2):
        study.tell(study.ask({"a": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    with tracking.parent_run("sweeps", "hyperparameter_sweep", {}) as run_id:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            _log_plots(run_id, study, "m")
    run = MlflowClient().get_run(run_id)
    assert not [k for k in run.data.metrics if k.startswith("importance.")]
    assert run.data.tags["importances"].startswith("unavailable: Optuna: ")
    plots = {a.path for a in MlflowClient().list_artifacts(run_id, "plots")}
    assert plots == {"plots/m_vs_params.png"}


def test_housing_grid_sweep_is_the_same_sequentially_and_on_threads(
    prefect_harness, data_env, mlflow_store, housing
):
    spec = ["alpha=" + ",".join(map(str, ALPHAS))]
    seq = run_sweep("housing", spec, seed=5, runner="sequential")
    out = runner.invoke(
        app, ["sweep", "housing", "--param", spec[0], "--seed", "5", "--runner", "threads",
              "--workers", "2"], env={"COLUMNS": "200"},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    last = out.stdout.strip().splitlines()[-1]  # MLflow's own messages go to stderr
    assert last.startswith("MLflow run id: ")
    thr_id = last.split()[-1]
    client = MlflowClient()
    me = f"{socket.gethostname()}:{os.getpid()}"
    by_runner = {}
    for name, run_id in (("sequential", seq["run_id"]), ("threads", thr_id)):
        parent = client.get_run(run_id)
        assert parent.info.status == "FINISHED"
        tags = parent.data.tags
        assert tags["mlcore.sweep"] == "true" and tags["mlcore.sampler"] == "grid"
        assert tags["mlcore.runner"] == name
        assert json.loads(tags["mlcore.search_space"])["alpha"]
        assert parent.data.params["dataset"] == "housing_scale"
        assert parent.data.metrics["sweep_wall_s"] > 0
        runs = trial_runs(run_id)
        assert sorted(runs) == [0, 1, 2, 3]
        assert all(r.info.status == "FINISHED" for r in runs.values())
        assert {r.data.tags["mlcore.worker"] for r in runs.values()} == {me}
        # each trial's run is named for what it is, in the MLflow UI's list
        assert {r.info.run_name for r in runs.values()} == {
            f"trial {n}: alpha={float(r.data.params['alphas']):g}" for n, r in runs.items()
        }
        by_runner[name] = {
            float(r.data.params["alphas"]): (
                r.data.metrics["best_val_mae"],
                r.data.metrics["best_test_mae"],
            )
            for r in runs.values()
        }
    assert by_runner["sequential"] == by_runner["threads"]
    assert sorted(by_runner["sequential"]) == ALPHAS
    for alpha, (val_mae, _) in by_runner["sequential"].items():
        assert val_mae == pytest.approx(course_ridge_val_mae(housing, alpha), rel=1e-9)
    # the record: best trial, leaderboard, plots, importances, registry
    best_alpha = min(by_runner["sequential"], key=lambda a: by_runner["sequential"][a][0])
    parent = client.get_run(seq["run_id"])
    runs = trial_runs(seq["run_id"])
    best = int(parent.data.metrics["best_trial"])
    assert float(runs[best].data.params["alphas"]) == best_alpha
    assert parent.data.metrics["best_val_mae"] == by_runner["sequential"][best_alpha][0]
    assert parent.data.tags["best_run_id"] == runs[best].info.run_id
    board = pd.read_csv(client.download_artifacts(seq["run_id"], "leaderboard.csv"))
    assert list(board["trial"])[0] == best and len(board) == 4
    assert list(board["best_val_mae"]) == sorted(board["best_val_mae"])
    table = json.loads(open(client.download_artifacts(seq["run_id"], "leaderboard.json")).read())
    assert len(table["data"]) == 4
    plots = {a.path for a in client.list_artifacts(seq["run_id"], "plots")}
    assert plots == {"plots/best_val_mae_vs_params.png", "plots/param_importances.png"}
    assert parent.data.metrics["importance.alpha"] == pytest.approx(1.0)
    version = client.get_model_version("housing-regressor", parent.data.tags["registered_version"])
    # the best trial's best model: the ridge child run of the trial's flow run
    assert version.run_id == runs[best].data.tags["best_run_id"]
    assert float(version.tags["best_val_mae"]) == by_runner["sequential"][best_alpha][0]
    assert version.tags["data_key"] == housing_data_key("housing_scale", 0.33, 42, 0.2)
    # the study lives in Optuna's own storage, logged with the sweep's run: Optuna reads it
    study = study_of(seq["run_id"])
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [(t.number, t.state.name) for t in study.trials] == [(n, "COMPLETE") for n in range(4)]
    assert {t.params["alpha"]: t.value for t in study.trials} == {
        a: v[0] for a, v in by_runner["sequential"].items()
    }
    assert study.best_trial.number == best
    # the CLI printed the leaderboard, best first
    assert "sweep by best_val_mae (best first)" in out.output
    assert f"best trial: {best}" in out.output


def test_a_grid_trial_starts_as_soon_as_another_ends_not_with_a_batch(
    prefect_harness, mlflow_store
):
    """On 2 threads, the grid's trials do not wait for a batch's slowest: while the long
    trial (30 epochs, trial 0 with seed 5) trains, the short ones (1-3 epochs) follow each
    other on the other thread. In batches of two, trials 2 and 3 would wait for trial 0."""
    result = run_sweep("convnet", ["epochs=30,1,2,3"], seed=5, runner="threads", workers=2)
    runs = trial_runs(result["run_id"])
    assert {n: int(r.data.params["epochs"]) for n, r in runs.items()} == {0: 30, 1: 1, 2: 2, 3: 3}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    path = MlflowClient().download_artifacts(result["run_id"], "sweep/trial_timings.json")
    timings = {t["trial"]: t for t in json.loads(open(path).read())}
    assert sorted(timings) == [0, 1, 2, 3]
    for n, t in timings.items():  # the driver's view of each trial against its run's own
        run = runs[n].info
        assert t["submitted"] <= t["started"] <= run.start_time / 1000 + 0.001  # (ms)
        assert run.start_time / 1000 < t["returned"]
        assert t["train_s"] > 0 and t["worker"] == runs[n].data.tags["mlcore.worker"]
    assert timings[1]["returned"] <= timings[2]["submitted"] < timings[0]["returned"]
    assert timings[2]["returned"] <= timings[3]["submitted"] < timings[0]["returned"]
    # the study holds the trials in the order they were asked, each told as it finished
    assert [(t.number, t.params, t.state.name) for t in study_of(result["run_id"]).trials] == [
        (n, {"epochs": e}, "COMPLETE") for n, e in enumerate((30, 1, 2, 3))
    ]


def study_of(run_id: str, client: MlflowClient | None = None) -> optuna.Study:
    """The sweep's study, loaded by Optuna from the journal logged with its run."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = (client or MlflowClient()).download_artifacts(run_id, "sweep/study.journal")
    storage = JournalStorage(JournalFileBackend(path))
    return optuna.load_study(study_name="mlcore-sweep", storage=storage)


def asked(result):
    return [(t["number"], t["params"]) for t in result["trials"]]


@pytest.mark.parametrize("sampler, n", [("random", 3), ("tpe", 5)])
def test_seeded_random_and_tpe_sweeps_propose_the_same_trials(
    prefect_harness, data_env, mlflow_store, sampler, n
):
    spec = ["alpha=1e-4..1e3:log"]
    kw = {"sampler": sampler, "trials": n, "runner": "threads", "workers": 2}
    first = run_sweep("housing", spec, seed=11, **kw)
    again = run_sweep("housing", spec, seed=11, **kw)
    assert asked(first) == asked(again) and len(asked(first)) == n
    values = [t["metrics"]["best_val_mae"] for t in first["trials"]]
    assert values == [t["metrics"]["best_val_mae"] for t in again["trials"]]
    alphas = [t["params"]["alpha"] for t in first["trials"]]
    assert len(set(alphas)) == n and all(1e-4 <= a <= 1e3 for a in alphas)
    if sampler == "random":  # the seed is what fixes them: Optuna's sampler seeded so proposes
        space = parse_space("housing", spec)

        def proposals(seed):
            study = optuna.create_study(sampler=make_sampler("random", space, seed, n))
            return [study.ask(space).params["alpha"] for _ in range(n)]

        assert alphas == proposals(11) and alphas != proposals(12)
    tags = MlflowClient().get_run(first["run_id"]).data.tags
    assert tags["mlcore.sampler"] == sampler


def test_failed_trials_are_recorded_and_a_sweep_of_only_failures_fails(
    prefect_harness, data_env, mlflow_store
):
    out = runner.invoke(
        app, ["sweep", "convnet", "--param", "lr=1e-3,1e-2", "--set", "num_train=5000"]
    )
    assert out.exit_code == 1, out.output
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: every trial failed; first: trial 0: ValueError: num_train "
                           "must be in [1, 1197], got 5000"), out.output  # fmt: skip
    client = MlflowClient()
    exp = client.get_experiment_by_name("convnet")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`mlcore.sweep` = 'true'")
    assert parent.info.status == "FAILED"
    runs = trial_runs(parent.info.run_id)
    assert sorted(runs) == [0, 1] and {r.info.status for r in runs.values()} == {"FAILED"}
    board = pd.read_csv(client.download_artifacts(parent.info.run_id, "leaderboard.csv"))
    assert list(board["state"]) == ["FAIL", "FAIL"]
    assert board["error"].str.contains("num_train must be in").all()
    # Optuna's study holds both failures with their errors; a failed trial is final (its
    # parameters and seed fail again), so there is nothing to resume
    study = study_of(parent.info.run_id)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert all("num_train must be in" in t.user_attrs["mlcore.error"] for t in study.trials)
    one_line_error(
        runner.invoke(app, ["sweep", "--resume", parent.info.run_id]),
        rf"every trial of the sweep {parent.info.run_id} finished \(2 failed: .*\); "
        "nothing to resume$",
    )
    # a sweep's run without the journal (logged by an older mlcore) says so in one line
    config = parent.data.tags["mlcore.sweep_config"]
    older = client.create_run(exp.experiment_id, tags={"mlcore.sweep_config": config})
    client.set_terminated(older.info.run_id, "FAILED")
    one_line_error(
        runner.invoke(app, ["sweep", "--resume", older.info.run_id]),
        rf"the sweep {older.info.run_id} has no Optuna journal \(sweep/study.journal\)",
    )


def test_a_resumed_study_continues_its_running_trials_and_tells_those_that_finished():
    """What --resume takes from Optuna's study: a finished trial stays; one left RUNNING whose
    child run FINISHED after the journal was last logged is told now; one left RUNNING without
    a finished run runs again; a failed one keeps its error."""
    from flows.study import ERROR_ATTR
    from flows.sweep import _from_study

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    trials = [study.ask(space) for _ in range(4)]
    study.tell(trials[0], 0.5)
    trials[1].set_user_attr(ERROR_ATTR, "ValueError: lr diverged")
    study.tell(trials[1], None, state=optuna.trial.TrialState.FAIL)
    finished = {"run_id": "r0", "metrics": {"best_val_mae": 0.5}, "model_uri": None}
    late = {"run_id": "r2", "metrics": {"best_val_mae": 0.25}, "model_uri": None}
    results, todo = _from_study(study, {0: finished, 2: late}, "best_val_mae")
    assert todo == [{"number": 3, "params": trials[3].params}]
    assert results[0] == {"number": 0, "params": trials[0].params, **finished, "state": "COMPLETE"}
    assert results[1]["state"] == "FAIL" and results[1]["error"] == "ValueError: lr diverged"
    assert results[2]["run_id"] == "r2" and sorted(results) == [0, 1, 2]
    states = [(t.state.name, t.value) for t in study.trials]
    assert states == [("COMPLETE", 0.5), ("FAIL", None), ("COMPLETE", 0.25), ("RUNNING", None)]
