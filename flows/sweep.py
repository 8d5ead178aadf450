"""Hyper-parameter sweeps: Optuna asks, trials run as Prefect tasks on the chosen task runner
(threads, or Dask worker processes), Optuna is told, and MLflow keeps one comparable record.

As many trials run at once as the runner has room for. With the grid or random sampler, whose
proposals do not depend on the results told, a trial is asked as soon as another finishes: no
worker waits for a batch's slowest trial, and trial n still gets the same parameters whatever
the runner and the order trials finish in. TPE's trials are asked in batches as wide as the
parallelism and told in trial-number order when the whole batch is back, so a seeded sweep
proposes the same trials whichever trial finishes first (they depend on the batch width only).

On Dask, each trial is a Prefect task run by prefect-dask on a worker process. The task engine
there reports to the Prefect API of the sweep's own process: when no ``PREFECT_API_URL`` is set,
the sweep passes its (temporary) server's URL in the settings it sends with each task, so no
worker starts a temporary server of its own on the shared SQLite file. The workers log their
trial's MLflow child run themselves (the tracking URI is passed along, made absolute).
"""

from __future__ import annotations

import importlib
import json
import queue
import statistics
import time
from typing import Any

import optuna
from prefect import flow

from flows.experiments import register_best
from flows.runners import crash_task_run, dask_width, import_data_readers, lost, task_runner
from flows.space import (
    check_metric,
    check_resume_alone,
    flow_arguments,
    get_experiment,
    make_sampler,
    space_from_json,
    sweep_config,
)
from flows.study import ERROR_ATTR, Journal, journal, logged_trials
from tasks import tracking
from tasks.errors import error_line
from tasks.sweep import best_trial, record_sweep, run_trial, trial_name, trial_seed

COMPLETE = optuna.trial.TrialState.COMPLETE
# samplers whose proposals do not depend on the results told: their trials need not wait for
# each other (see _run_trials)
BLIND_SAMPLERS = ("grid", "random")
# per trial of a session: when it was submitted and its result came back (Unix time, s, as the
# trial's MLflow run's start and end), Solver.train()'s wall time (None for housing), its worker
TIMINGS = "sweep/trial_timings.json"


class SweepIncomplete(RuntimeError):
    """Some trials were lost (their worker died, the sweep was stopped): the record holds the
    finished ones, ``mlcore sweep --resume RUN_ID`` runs the rest."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result

    def __reduce__(self):
        return type(self), (self.args[0], self.result)


def _api_url() -> str:
    """The Prefect API this flow reports to (the temporary server's when none is configured)."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or str(FlowRunContext.get().client.api_url)


def run_sweep(
    experiment: str | None = None,
    params: list[str] | None = None,
    sampler: str | None = None,
    trials: int | None = None,
    seed: int = 0,
    metric: str | None = None,
    set_: list[str] | None = None,
    runner: str | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    resume: str | None = None,
    log_models: str = "best",
) -> dict[str, Any]:
    """Validate the command line's sweep (or read a past one's back for ``resume``) and run
    it as the ``hyperparameter_sweep`` flow on the runner's task runner. ``log_models``: "best"
    (only the best trial's model and plots, added at the end) or "all" (every trial's)."""
    # a user who names a cluster means to use it
    runner = runner or ("dask" if dask_address else "sequential")
    runner_obj, width = task_runner(runner, workers, dask_address)
    # the leaderboard says it all: Optuna's line per told trial is noise on the terminal
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_resume_alone(
        resume, experiment, params, sampler, trials, metric, set_, log_models != "best"
    )
    if resume:
        config = _sweep_config(resume)
        _check_resumable(resume, config)
    else:
        config = sweep_config(experiment, params, sampler, trials, seed, metric, set_, log_models)
    sweep = hyperparameter_sweep.with_options(task_runner=runner_obj)
    return sweep(config=config, runner=runner, width=width or 0, resume_run_id=resume)


def _sweep_config(run_id: str) -> dict[str, Any]:
    try:
        run = tracking.client().get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow's "not found" has several types
        raise ValueError(f"--resume: no MLflow run {run_id!r}") from exc
    text = run.data.tags.get("mlcore.sweep_config")
    if text is None:
        raise ValueError(f"--resume: MLflow run {run_id} is not a sweep's run")
    return json.loads(text)


def _check_resumable(run_id: str, config: dict) -> None:
    trials = logged_trials(run_id)
    done = _finished_trials(run_id, config["metric"], get_experiment(config["experiment"]))
    running = optuna.trial.TrialState.RUNNING
    if len(trials) >= config["trials"] and not any(
        t.state == running and t.number not in done for t in trials
    ):
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
        raise ValueError(
            f"--resume: every trial of the sweep {run_id} finished ({failed} failed: a failed "
            "trial fails again with its parameters and seed); nothing to resume"
        )


@flow(name="hyperparameter_sweep", log_prints=True)
def hyperparameter_sweep(
    config: dict[str, Any], runner: str = "sequential", width: int = 1,
    resume_run_id: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """ask a batch -> run it (one Prefect task per trial) -> tell -> ... -> the record ->
    register the best model. ``config`` holds experiment, space (Optuna JSON), sampler,
    trials, seed, metric and fixed (the --set values)."""
    exp = get_experiment(config["experiment"])
    metric, higher = check_metric(exp.name, config["metric"])
    if resume_run_id:
        context = tracking.reopened_run(resume_run_id)
    else:
        tags = {
            "mlcore.sweep": "true", "mlcore.sampler": config["sampler"],
            "mlcore.search_space": config["space"], "mlcore.sweep_config": json.dumps(config),
            "mlcore.metric": metric,
        }  # fmt: skip
        context = tracking.parent_run(exp.name, "hyperparameter_sweep", config["fixed"], tags=tags)
    with context as run_id:
        tracking.set_tags(run_id, {"mlcore.runner": runner})
        try:
            result = _sweep(config, run_id, width or dask_width(), bool(resume_run_id))
        finally:
            tracking.end_orphaned_children(run_id)
        if result["incomplete"]:
            raise SweepIncomplete(result["incomplete"], result)
        return result


def _prepare_data(exp_name: str, fixed: dict) -> None:
    """Download once, in this process, before the trials (their fetch then hits the cache),
    and import the data readers (the trials of the sequential and threads runners run here)."""
    from mlcore.data import DATASETS
    from tasks.data import fetch_cached

    if fixed["dataset"] in DATASETS:
        fetch_cached(fixed["dataset"])
    import_data_readers()


def _sweep(config: dict, run_id: str, width: int, resuming: bool) -> dict[str, Any]:
    exp_name, metric = config["experiment"], config["metric"]
    exp = get_experiment(exp_name)
    _prepare_data(exp_name, config["fixed"])
    done = _finished_trials(run_id, metric, exp) if resuming else {}
    # an unfinished trial that checkpointed continues in its own run, from its last checkpoint
    continued = _continuable_trials(run_id, exp, set(done)) if resuming else {}
    with journal(run_id, resuming) as book:
        asked = book.asked()
        # a resumed random/TPE sampler must not replay the proposals already asked
        seed = config["seed"] if not asked else trial_seed(config["seed"], 1_000_000 + asked)
        space = space_from_json(config["space"])
        study = book.study(
            "maximize" if exp.metrics[metric] else "minimize",
            make_sampler(config["sampler"], space, seed, config["trials"]),
        )
        results, todo = _from_study(study, done, metric)
        return _run_trials(config, run_id, width, exp, book, study, space, results, todo,
                           continued)  # fmt: skip


def _from_study(study: optuna.Study, done: dict[int, dict], metric: str) -> tuple[dict, list]:
    """What a resumed study holds: trial number -> the record of each finished trial (told, or
    whose child run FINISHED after the journal was last logged: told now), and the trials to
    run again (RUNNING: lost, or stopped with the sweep)."""
    results: dict[int, dict] = {}
    todo: list[dict] = []
    for t in study.get_trials(deepcopy=False):
        rec = {"number": t.number, "params": t.params}
        if t.number in done:
            results[t.number] = {**rec, **done[t.number], "state": "COMPLETE"}
            if t.state == optuna.trial.TrialState.RUNNING:
                _tell(study, t.number, done[t.number]["metrics"][metric], COMPLETE)
        elif t.state == optuna.trial.TrialState.RUNNING:
            todo.append(rec)
        else:  # FAIL (final: the same parameters and seed fail the same way), or a lost run
            error = t.user_attrs.get(ERROR_ATTR) or f"{t.state.name} without a FINISHED run"
            results[t.number] = {**rec, "state": "FAIL", "error": error, "metrics": {}}
    return results, todo


def _run_trials(
    config: dict, run_id: str, width: int, exp, book: Journal, study: optuna.Study,
    space: dict, results: dict[int, dict], todo: list[dict], continued: dict[int, str],
) -> dict[str, Any]:  # fmt: skip
    """Ask, run and tell trials until the study holds ``config["trials"]`` (the resumed
    ``todo`` first), then the record and the registration. Trials run as wide as ``width``:
    for a sampler whose proposals do not depend on results (grid, random), a new trial is asked
    as soon as one finishes (no worker waits for a batch's slowest trial); for TPE, in batches
    told in trial-number order (see the module's docstring)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    metric, higher = config["metric"], exp.metrics[config["metric"]]
    uri = tracking.tracking_uri()
    api = _api_url()
    incomplete: list[str] = []
    # lean trials: no model, plots or gradient gate of their own (see Experiment.lean_trials)
    lean = {"log_model": config.get("log_models") == "all", "gate": False}
    lean = lean if exp.lean_trials else {}
    pipelined = config["sampler"] in BLIND_SAMPLERS
    gated: set = set()
    overheads: list[float] = []  # per trial: submit-to-result minus Solver.train()'s wall time
    timings: list[dict] = []  # per trial: when it was submitted and came back (TIMINGS)
    finished: queue.Queue = queue.Queue()  # (future, perf_counter, Unix time), as each ends
    # id(future) -> record, submitted (perf_counter, Unix time), rerun
    running: dict[int, tuple[dict, tuple[float, float], bool]] = {}
    ran = 0

    def start_trials(batch: list[dict], rerun: bool) -> None:
        nonlocal gated, ran, start
        ran += len(batch)
        book.save()  # the trials are in the study before they run: a kill leaves them RUNNING
        arguments = [flow_arguments(exp, rec["params"], config["fixed"]) for rec in batch]
        for args in arguments:
            gated = _gate(exp, args, config["seed"], run_id, gated)
        # the trial phase starts with the first trial's submission: the first gate (a
        # gradient check, once per architecture) is not a trial
        start = start if start is not None else time.perf_counter()
        for rec, args in zip(batch, arguments, strict=True):
            submitted = time.perf_counter(), time.time()
            future = run_trial.submit(exp.flow, {**args, **lean}, exp.reported,
                                      exp.baseline_metric, config["seed"], rec["number"], run_id,
                                      uri, trial_name(rec["number"], rec["params"]),
                                      continued.get(rec["number"]), exp.trial_subflow)  # fmt: skip
            running[id(future)] = (rec, submitted, rerun)
            future.add_done_callback(lambda f: finished.put((f, time.perf_counter(), time.time())))

    def end_trials() -> None:
        """Wait for a finished trial (for all of a TPE batch), record and tell it (them)."""
        ended = []
        while not ended or (not pipelined and len(ended) < len(running)):
            ended.append(finished.get())
        for future, returned, returned_at in sorted(
            ended, key=lambda e: running[id(e[0])][0]["number"]
        ):
            rec, (submitted, submitted_at), _ = running.pop(id(future))
            results[rec["number"]] = outcome = _outcome(rec, future)
            if outcome.get("train_s") is not None:
                overheads.append(returned - submitted - outcome["train_s"])
            timings.append({"trial": rec["number"], "submitted": submitted_at,
                            "started": outcome.get("started"), "returned": returned_at,
                            "train_s": outcome.get("train_s"),
                            "worker": outcome.get("worker")})  # fmt: skip
            if outcome["state"] == "LOST":  # left RUNNING in the study: --resume runs it
                incomplete.append(f"trial {rec['number']} was lost ({outcome['error']})")
            elif outcome["state"] == "COMPLETE":
                _tell(study, rec["number"], outcome["metrics"][metric], COMPLETE)
            else:
                book.set_error(rec["number"], outcome["error"])
                _tell(study, rec["number"], None, optuna.trial.TrialState.FAIL)

    start: float | None = None
    # the settings sent with each task name this flow's API: workers report there
    with temporary_settings(updates={PREFECT_API_URL: api}):
        while todo or running or _asked(study) < config["trials"]:
            # reruns of a resumed sweep first, on their own: the sampler does not know them
            # until they are told, so a fresh ask beside them could propose one again
            reruns = any(rerun for _, _, rerun in running.values())
            if todo and not running:
                batch, todo = todo[:width], todo[width:]
                start_trials(batch, rerun=True)
            elif not todo and not reruns and (pipelined or not running):
                free = min(width - len(running), config["trials"] - _asked(study))
                if free > 0:
                    asked = [study.ask(space) for _ in range(free)]
                    start_trials([{"number": t.number, "params": t.params} for t in asked], False)
            if running:
                end_trials()
    book.save()
    wall = time.perf_counter() - start if start is not None else 0.0
    timing = {"sweep_wall_s": wall, "trials_run": ran}
    if overheads:
        timing["trial_overhead_s"] = statistics.median(overheads)
    tracking.log_metrics(run_id, timing)
    tracking.log_text(run_id, json.dumps(sorted(timings, key=lambda t: t["trial"])), TIMINGS)
    ordered = [results[n] for n in sorted(results)]
    best = best_trial(ordered, metric, higher)
    if best is not None and best["model_uri"] is None and not incomplete:
        best["model_uri"] = _add_model(exp, config, best)
    record = record_sweep(run_id, study, ordered, metric, higher)
    result = {
        "run_id": run_id, "metric": metric, "trials": ordered, "best": record["best"],
        "leaderboard": record["leaderboard"], "sweep_wall_s": wall, "registered": None,
        "incomplete": "",
    }  # fmt: skip
    failed = [t for t in ordered if t["state"] != "COMPLETE"]
    if incomplete:
        result["incomplete"] = (
            f"{'; '.join(incomplete)}; {len(ordered) - len(failed)} of {config['trials']} trials "
            f"finished; continue with: mlcore sweep --resume {run_id}"
        )
        return result
    if record["best"] is None:
        raise RuntimeError(f"every trial failed; first: trial {failed[0]['number']}: "
                           f"{failed[0]['error']}")  # fmt: skip
    if failed:
        tracking.set_tags(run_id, {"failed_trials": ",".join(str(t["number"]) for t in failed)})
    result["registered"] = _register(config, record["best"], metric, run_id)
    return result


def _asked(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False))


def _gate(exp, args: dict, seed: int, run_id: str, gated: set) -> set:
    """Run the experiment's gate for a trial's arguments unless it ran on the same values of
    ``exp.gate_on`` already (``gated``, returned with them added); its failure fails the sweep
    before any trial trains."""
    if not exp.lean_trials or exp.gate is None:
        return gated
    values = exp.resolve(args)
    key = tuple(values[k] for k in exp.gate_on)
    if key not in gated:
        module, _, function = exp.gate.partition(":")
        getattr(importlib.import_module(module), function)(values, seed, run_id)
    return gated | {key}


def _add_model(exp, config: dict, best: dict) -> str:
    """The best trial's model and plots, added to its run by resuming it with
    ``log_model=True`` (no training: its last checkpoint is its end). Returns the model URI."""
    args = flow_arguments(exp, best["params"], config["fixed"])
    result = exp.load_flow()(
        **args, seed=best["seed"], resume=best["run_id"], registry=False, log_model=True
    )
    tracking.set_tags(best["run_id"], {"mlcore.model_uri": result["model_uri"]})
    return result["model_uri"]


def _tell(study: optuna.Study, number: int, value: float | None, state) -> None:
    try:
        study.tell(number, value, state=state)
    except RuntimeError:
        # GridSampler calls Study.stop once the last point of its grid is told, which raises
        # outside optimize(); the trial is recorded by then. Any other error re-raises.
        sampler = study.sampler
        recorded = study.get_trials(deepcopy=False)[number].state
        if not (
            isinstance(sampler, optuna.samplers.GridSampler)
            and sampler.is_exhausted(study)
            and recorded == state
        ):
            raise


def _outcome(rec: dict, future) -> dict[str, Any]:
    base = {"number": rec["number"], "params": rec["params"]}
    try:
        out = future.result()
    except Exception as exc:  # noqa: BLE001 - a trial's failure is recorded, not fatal
        state = "LOST" if lost(exc) else "FAIL"
        error = f"{type(exc).__name__}: {error_line(exc)}"
        if state == "LOST":
            crash_task_run(future, error)
        return {**base, "state": state, "error": error, "metrics": {}}
    return {**base, **out, "state": "COMPLETE"}


def _finished_trials(run_id: str, metric: str, exp) -> dict[int, dict]:
    """trial number -> its FINISHED child run (id, metrics, worker, model URI)."""
    found = {}
    for run in tracking.child_runs(run_id):
        number = run.data.tags.get("mlcore.trial")
        if run.info.status != "FINISHED" or number is None or metric not in run.data.metrics:
            continue
        found[int(number)] = {
            "run_id": run.info.run_id,
            "metrics": {k: v for k, v in run.data.metrics.items() if k in exp.reported},
            "baseline": run.data.metrics.get(exp.baseline_metric),
            "worker": run.data.tags.get("mlcore.worker", ""),
            "model_uri": run.data.tags.get("mlcore.model_uri"),  # None: a lean trial's
            "seed": int(run.data.params["seed"]) if "seed" in run.data.params else None,
        }  # fmt: skip
    return found


def _continuable_trials(run_id: str, exp, finished: set[int]) -> dict[int, str]:
    """trial number -> its newest unfinished child run that has a checkpoint and may be resumed
    (an experiment whose flow can resume): the trial continues there. A trial that never
    checkpointed, or whose run cannot be resumed (said why), runs again in a new run."""
    if not exp.resumable:
        return {}
    found: dict[int, str] = {}
    runs = sorted(tracking.child_runs(run_id), key=lambda r: r.info.start_time)
    for run in runs:
        number = run.data.tags.get("mlcore.trial")
        if number is None or int(number) in finished or run.info.status == "FINISHED":
            continue
        if not tracking.logged_checkpoints(run.info.run_id):
            continue
        try:
            tracking.resumable_params(run.info.run_id, exp.flow_name)
        except ValueError as exc:
            print(f"trial {number} runs again from its start: {exc}")
            continue
        found[int(number)] = run.info.run_id
    return found


def _register(config: dict, best: dict, metric: str, run_id: str) -> dict:
    """The best trial's model through the registry, as the experiment declares it (model name,
    data key, the trivial baseline its flow measured on the same validation rows)."""
    exp = get_experiment(config["experiment"])
    values = exp.resolve(flow_arguments(exp, best["params"], config["fixed"]))
    return register_best(
        exp, values, best["model_uri"], metric, best["metrics"][metric], run_id, best["baseline"]
    )
