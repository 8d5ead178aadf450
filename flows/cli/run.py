"""``mlcore run EXPERIMENT``: run an experiment's flow now, in this process, and show its
result. The commands and their options are built from the experiment registry
(:mod:`flows.experiments`): one option per declared parameter, with its help, default and
constraint, its text read by :mod:`flows.params`, the parser every command shares."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from flows.cli.errors import UsageError, friendly_errors, preflight
from flows.cli.render import console, print_table
from flows.experiments import EXPERIMENTS, Experiment, Param
from flows.parameter_docs import default_text

run_app = typer.Typer(help="Run a flow now, in this process.", no_args_is_help=True)

RESUME_HELP = (
    "Continue this unfinished (FAILED or KILLED) MLflow run from its last checkpoint, with its "
    "own parameters."
)


def _metavar(param: Param) -> str:
    kind = {int: "INT", float: "FLOAT", bool: "BOOL"}.get(param.item_type, "TEXT")
    if param.allowed:
        kind = "|".join(map(str, param.allowed))
    return f"{kind},..." if param.is_list else kind


def _option(param: Param) -> inspect.Parameter:
    keyword = inspect.Parameter.KEYWORD_ONLY
    if param.base_type is bool:
        name = param.option_name[2:]
        option = typer.Option(f"--{name}/--no-{name}", help=param.help)
        return inspect.Parameter(
            param.name, keyword, default=param.default, annotation=Annotated[bool, option]
        )
    option = typer.Option(
        param.option_name, help=param.help + (" Comma-separated." if param.is_list else ""),
        metavar=_metavar(param), show_default=default_text(param),
    )  # fmt: skip
    return inspect.Parameter(
        param.name, keyword, default=None, annotation=Annotated[str | None, option]
    )


class RunCommand:
    """``mlcore run NAME``: parses the options of ``exp``'s declared parameters, then calls
    ``run(values, resume)`` with the ones given (the rest keep the flow's defaults). An
    experiment whose flow can resume also gets ``--resume RUN_ID``, which takes no other
    option. Its signature (what typer builds the options from) is made when typer first asks,
    when the command line is parsed: some parameters' choices live in mlcore, which loads
    numpy, and the CLI loads nothing before its process set-up."""

    def __init__(self, exp: Experiment, run: Callable[[dict, str | None], None]):
        self.exp, self.run = exp, run
        self.__name__ = self.__qualname__ = f"run_{exp.name}"
        self.__doc__ = exp.help
        self.__module__ = __name__
        self._signature: inspect.Signature | None = None

    @property
    def params(self) -> list[Param]:
        return [p for p in self.exp.params if p.cli]

    @property
    def __signature__(self) -> inspect.Signature:
        if self._signature is None:
            options = [_option(p) for p in self.params]
            if self.exp.resumable:
                resume = typer.Option(metavar="RUN_ID", help=RESUME_HELP)
                options.append(
                    inspect.Parameter(
                        "resume",
                        inspect.Parameter.KEYWORD_ONLY,
                        default=None,
                        annotation=Annotated[str | None, resume],
                    )  # fmt: skip
                )
            self._signature = inspect.Signature(options)
        return self._signature

    def __call__(self, **given: Any) -> None:
        from flows.params import parse

        resume = given.pop("resume", None)
        values = {}
        for p in self.params:
            raw = given.get(p.name)
            if p.base_type is bool:
                if raw is not None and raw != p.default:
                    values[p.name] = raw
            elif raw is not None:
                values[p.name] = parse(p, raw, p.option_name)
        if resume is not None and values:
            first = next(p for p in self.params if p.name in values)
            raise UsageError(
                f"--resume continues the run with its own parameters: drop {first.option_name}"
            )
        self.run(values, resume)


def _runner(exp: Experiment, show: Callable[[dict], None]) -> Callable[[dict, str | None], None]:
    def run(values: dict, resume: str | None) -> None:
        flow = exp.load_flow()
        if resume is None:
            show(flow(**values))
            return
        from tasks import tracking

        # a sweep's trial that skipped its model: resuming it adds the model
        recorded = tracking.resumable_params(resume, flow.name, exp.skipped_model_tag)
        show(flow(**recorded, resume=resume))

    return run


def show_housing_result(result: dict) -> None:
    from tasks.linear import model_label

    hyper = ("alpha", "lr", "epochs", "batch_size")  # the seed is the same for every row
    rows = [
        {**r, "model": model_label(r["model"], {k: r[k] for k in hyper if k in r})}
        for r in sorted(result["results"], key=lambda r: r["val_mae"])
    ]
    cols = ["model", "val_mae", "test_mae", "test_r2", "train_mae"]
    print_table("housing_regression (sorted by validation MAE)", rows, cols)
    best = next(r for r in rows if r["run_id"] == result["best"]["run_id"])
    console.print(f"best by val_mae: [bold]{best['model']}[/] (child run {best['run_id']})")
    console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


def show_gradcheck_result(result: dict) -> None:
    rows = [{**r, "ok": "ok" if r["ok"] else "FAIL"} for r in result["results"]]
    print_table(
        "gradient_check: max relative error",
        rows,
        ["layer", "input", "rel_error", "threshold", "ok"],
    )
    console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


def show_convnet_result(result: dict) -> None:
    if result.get("resumed_from_epoch"):
        console.print(f"resumed from the checkpoint of epoch {result['resumed_from_epoch']}")
    row = {k: result[k] for k in ("final_train_acc", "best_val_acc", "test_acc")}
    print_table("convnet_training", [row], list(row))
    console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


def show_pipeline_result(result: dict) -> None:
    show_housing_result(result["housing"])
    show_gradcheck_result(result["gradcheck"])
    show_convnet_result(result["convnet"])


SHOW = {
    "housing": show_housing_result,
    "gradcheck": show_gradcheck_result,
    "convnet": show_convnet_result,
    "pipeline": show_pipeline_result,
}
for _name, _exp in EXPERIMENTS.items():
    run_app.command(_name, help=_exp.help)(
        # the options are parsed first: a mistake is refused before any server starts
        friendly_errors(RunCommand(_exp, preflight(flows=True)(_runner(_exp, SHOW[_name]))))
    )
