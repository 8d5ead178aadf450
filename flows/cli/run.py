"""``mlcore run housing|gradcheck|convnet|pipeline``: run a flow now, in this process, and show
its result."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flows.cli.errors import UsageError, friendly_errors, preflight
from flows.cli.options import parse_list
from flows.cli.render import console, print_table

run_app = typer.Typer(help="Run a flow now, in this process.", no_args_is_help=True)


@run_app.command("housing")
@friendly_errors
@preflight(flows=True)
def run_housing(
    alphas: Annotated[str | None, typer.Option(help="Ridge alphas, comma-separated.")] = None,
    sgd_lr: Annotated[str | None, typer.Option(help="SGD learning rates to tune over.")] = None,
    sgd_epochs: Annotated[str | None, typer.Option(help="SGD epoch counts to tune over.")] = None,
    sgd_batch_size: Annotated[int, typer.Option(min=1, help="SGD mini-batch size.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of SGD's shuffling.")] = 1234,
    standardize: Annotated[
        bool,
        typer.Option(
            help="Standardize the features on the training rows (--no-standardize: fit on the "
            "features as downloaded, which reproduces the course's printed ridge errors)."
        ),
    ] = True,
) -> None:
    """Linear regression on LIBSVM housing_scale: OLS, ridge per alpha, SGD tuned on val."""
    from flows.housing import housing_regression

    params: dict[str, Any] = {
        "sgd_batch_size": sgd_batch_size, "seed": seed, "standardize": standardize,
    }  # fmt: skip
    for key, option, kind, lowest, strict in (
        ("alphas", "--alphas", float, 0, False),
        ("sgd_lrs", "--sgd-lr", float, 0, True),
        ("sgd_epochs", "--sgd-epochs", int, 1, False),
    ):
        text = {"alphas": alphas, "sgd_lrs": sgd_lr, "sgd_epochs": sgd_epochs}[key]
        value = parse_list(text, kind, option)
        if value is None:
            continue
        bad = [v for v in value if v < lowest or (strict and v == lowest)]
        if bad:
            raise UsageError(f"{option}: {bad[0]!r} must be {'>' if strict else '>='} {lowest}")
        params[key] = value
    result = housing_regression(**params)
    show_housing_result(result)


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


@run_app.command("gradcheck")
@friendly_errors
@preflight(flows=True)
def run_gradcheck(
    layers: Annotated[
        str | None, typer.Option(help="Checks to run, comma-separated (default: all).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs (the course's 231).")] = 231,
) -> None:
    """Gradient-check every layer, sandwich and the ConvNet (fails if any is over threshold)."""
    from flows.gradcheck import gradient_check_flow
    from mlcore.nn.checks import GRADIENT_CHECKS

    names = parse_list(layers, str, "--layers")
    unknown = [n for n in names or [] if n not in GRADIENT_CHECKS]
    if unknown:
        raise UsageError(
            f"--layers: unknown check {unknown[0]!r}; known: {', '.join(GRADIENT_CHECKS)}"
        )
    show_gradcheck_result(gradient_check_flow(layers=names, seed=seed))


def show_gradcheck_result(result: dict) -> None:
    rows = [{**r, "ok": "ok" if r["ok"] else "FAIL"} for r in result["results"]]
    print_table(
        "gradient_check: max relative error",
        rows,
        ["layer", "input", "rel_error", "threshold", "ok"],
    )
    console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


@run_app.command("convnet")
@friendly_errors
@preflight(flows=True)
def run_convnet(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="digits (offline) or cifar10.")] = "digits",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Default: per dataset (digits 25, cifar10 50).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(min=0.0, help="Learning rate (per dataset: digits 1e-2, cifar10 1e-3)."),
    ] = None,
    update_rule: Annotated[str, typer.Option(help="sgd, sgd_momentum, rmsprop or adam.")] = "adam",
    reg: Annotated[float, typer.Option(min=0.0, help="L2 regularisation.")] = 0.0,
    hidden_dim: Annotated[int | None, typer.Option(min=1, help="Default: per dataset.")] = None,
    num_filters: Annotated[int | None, typer.Option(min=1, help="Default: per dataset.")] = None,
    filter_size: Annotated[int | None, typer.Option(min=1, help="Default: per dataset.")] = None,
    weight_scale: Annotated[
        float | None, typer.Option(min=0.0, help="Default: per dataset.")
    ] = None,
    num_train: Annotated[
        int | None, typer.Option(min=1, help="Use the first N training rows.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and minibatches.")] = 0,
    resume: Annotated[
        str | None,
        typer.Option(
            metavar="RUN_ID",
            help="Continue this unfinished (FAILED or KILLED) MLflow run from its last "
            "checkpoint, with its own parameters.",
        ),
    ] = None,
) -> None:
    """Train the course's ThreeLayerConvNet with Solver (gated by a gradient check)."""
    from flows.convnet import convnet_training

    if resume is not None:
        from tasks import tracking

        # by name: typer's Context may come from its own copy of click
        given = [
            name for name in ctx.params
            if name != "resume" and ctx.get_parameter_source(name).name != "DEFAULT"
        ]  # fmt: skip
        if given:
            raise UsageError(
                f"--resume continues the run with its own parameters: drop "
                f"--{given[0].replace('_', '-')}"
            )
        params = tracking.resumable_params(resume, "convnet_training")
        show_convnet_result(convnet_training(**params, resume=resume))
        return
    if update_rule not in ("sgd", "sgd_momentum", "rmsprop", "adam"):
        raise UsageError(
            f"--update-rule: {update_rule!r} is not one of sgd, sgd_momentum, rmsprop, adam"
        )
    result = convnet_training(
        dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, update_rule=update_rule,
        reg=reg, hidden_dim=hidden_dim, num_filters=num_filters, filter_size=filter_size,
        weight_scale=weight_scale, num_train=num_train, seed=seed,
    )  # fmt: skip
    show_convnet_result(result)


def show_convnet_result(result: dict) -> None:
    if result.get("resumed_from_epoch"):
        console.print(f"resumed from the checkpoint of epoch {result['resumed_from_epoch']}")
    row = {k: result[k] for k in ("final_train_acc", "best_val_acc", "test_acc")}
    print_table("convnet_training", [row], list(row))
    console.print(f"MLflow run id: [bold]{result['run_id']}[/]")


@run_app.command("pipeline")
@friendly_errors
@preflight(flows=True)
def run_pipeline(
    convnet_epochs: Annotated[int, typer.Option(min=1)] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the ConvNet training.")] = 0,
) -> None:
    """The main job: housing regression, the gradient checks, the ConvNet on digits."""
    from flows.pipeline import pipeline

    result = pipeline(convnet_epochs=convnet_epochs, seed=seed)
    show_housing_result(result["housing"])
    show_gradcheck_result(result["gradcheck"])
    show_convnet_result(result["convnet"])
