"""mlcore's experiments, each declared once.

An :class:`Experiment` names its flow, its parameters (type, default, default per dataset,
constraint, help), the metrics of the flow's MLflow run that a sweep may optimise (and their
direction), and how its best model is registered (model name, data key, trivial baseline and
margin). Everything else reads it: the flows take their defaults from it, ``mlcore run`` builds
its options from it, ``mlcore sweep --param/--set`` and ``mlcore rerun --set`` parse with
:mod:`flows.params` against it, ``prefect.yaml`` is checked against it
(:func:`flows.deployments.deployment_problems`) and the docs' parameter tables are generated
from it (:mod:`flows.parameter_docs`).

This module imports no flow (the flows import it): an experiment names its flow as
``module:function`` and :meth:`Experiment.load_flow` imports it when asked.
"""

from __future__ import annotations

import importlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Param:
    """One parameter of an experiment's flow.

    ``default`` is the flow's default; ``None`` with ``per_dataset`` means "the dataset's
    default" (resolved by :meth:`Experiment.resolve`). ``minimum`` bounds numbers (and every
    item of a list), strictly when ``exclusive``; ``maximum`` likewise from above.
    ``choices`` bounds strings: a tuple, or ``"module:NAME"`` naming where the library keeps
    them (imported when first needed: this module loads neither numpy nor Prefect).
    ``alias`` is the singular name a sweep may use for one item of a list parameter
    (``alpha`` for ``alphas``); ``option`` the ``mlcore run`` option when it is not
    ``--<name>``. ``data``: fixed for a whole sweep (``--set`` only, never swept).
    ``cli``: offered by ``mlcore run`` (False for what a sweep or the CLI sets itself)."""

    name: str
    type: Any
    default: Any
    help: str
    per_dataset: Mapping[str, Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False
    choices: tuple | str = ()
    alias: str | None = None
    option: str | None = None
    data: bool = False
    cli: bool = True

    @property
    def allowed(self) -> tuple:
        """The values a string parameter may take (empty: any)."""
        if isinstance(self.choices, str):
            module, _, name = self.choices.partition(":")
            return tuple(getattr(importlib.import_module(module), name))
        return self.choices

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.base_type) is list

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.type)

    @property
    def base_type(self) -> Any:
        """The type without ``| None``."""
        if typing.get_origin(self.type) in (typing.Union, types.UnionType):
            kinds = [a for a in typing.get_args(self.type) if a is not type(None)]
            return kinds[0]
        return self.type

    @property
    def item_type(self) -> Any:
        """The type of one value (of one item, for a list)."""
        base = self.base_type
        return typing.get_args(base)[0] if typing.get_origin(base) is list else base

    @property
    def option_name(self) -> str:
        return self.option or "--" + self.name.replace("_", "-")


@dataclass
class Experiment:
    """An experiment: its flow and parameters, its metrics, its registration."""

    name: str  # the CLI's name and the MLflow experiment's
    flow: str  # "module:function"
    entrypoint: str  # prefect.yaml's entrypoint of its deployment
    help: str
    params: list[Param]
    # metrics of the flow's MLflow run a sweep may optimise -> higher is better
    metrics: dict[str, bool] = field(default_factory=dict)
    reported: tuple[str, ...] = ()  # the metrics a trial reports (the leaderboard's columns)
    # metrics of wall time, not of the result (``mlcore rerun`` does not compare them)
    timings: tuple[str, ...] = ()
    model_name: Callable[[Mapping], str] | None = None
    data_key: Callable[[Mapping], str] | None = None
    baseline: str = ""  # the trivial model the registration gate compares with
    baseline_metric: str = ""  # its validation metric, logged on the flow's run
    margin: float = 0.0  # by how much a model must beat it (higher-is-better metrics)
    # a model worse than the registry's champion on the same data key by more than this (in
    # the metric's units) is a regression: tag mlcore.regressed, Prefect event
    # mlcore.model.regressed (and an alert, see flows.alerts)
    regression_margin: float | None = None
    # a sweep's trial: extra flow arguments implied by the swept/fixed values (e.g. housing's
    # model kind from the parameters given)
    trial_defaults: Callable[[Mapping], dict] | None = None
    resumable: bool = False  # the flow can continue an unfinished run (``resume=RUN_ID``)
    # the flow submits tasks to a task runner of its own (housing fits its model kinds at
    # once): a sweep's trial runs it as a subflow, which has one. Any other flow runs inside
    # the trial's task, without a flow run of its own to create, start and end (about 1 s
    # of a trial's time)
    trial_subflow: bool = False
    # lean trials: the flow takes ``log_model`` and ``gate``, so a sweep's trial skips its model,
    # plots and gradient gate. The sweep runs ``gate`` ("module:function(values, seed, run_id)")
    # once per distinct value of the ``gate_on`` parameters, and adds the best trial's model by
    # resuming its run, which the flow tagged ``skipped_model_tag`` (name, value)
    gate: str | None = None
    gate_on: tuple[str, ...] = ()
    skipped_model_tag: tuple[str, str] | None = None

    @property
    def lean_trials(self) -> bool:
        return self.skipped_model_tag is not None

    @property
    def default_metric(self) -> str:
        return next(iter(self.metrics))

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def find(self, name: str) -> Param | None:
        """The parameter called ``name`` or aliased so."""
        return next((p for p in self.params if name in (p.name, p.alias)), None)

    def defaults(self) -> dict[str, Any]:
        """The flow's default arguments (lists copied: a flow may not share them)."""
        return {
            p.name: list(p.default) if isinstance(p.default, list) else p.default
            for p in self.params
        }

    def resolve(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter's value: the given ones, then the defaults, a per-dataset default
        taking the place of None."""
        out = {**self.defaults(), **values}
        dataset = out.get("dataset")
        for p in self.params:
            if out[p.name] is None and p.per_dataset is not None:
                if dataset not in p.per_dataset:
                    raise ValueError(
                        f"unknown dataset {dataset!r}; expected one of {', '.join(p.per_dataset)}"
                    )
                out[p.name] = p.per_dataset[dataset]
        return out

    def load_flow(self):
        module, _, name = self.flow.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def flow_name(self) -> str:
        return self.load_flow().name


# ---------------------------------------------------------------------------- the experiments


def _housing_key(p: Mapping) -> str:
    from tasks.registry import housing_data_key

    return housing_data_key(p["dataset"], p["test_size"], p["split_random_state"], p["val_split"])


def _convnet_key(p: Mapping) -> str:
    from tasks.registry import convnet_data_key

    return convnet_data_key(p["dataset"], p["num_train"])


HOUSING_MODELS = ("ols", "ridge", "sgd")
SGD_PARAMS = ("sgd_lrs", "sgd_epochs", "sgd_batch_size")


def _housing_trial(values: Mapping) -> dict:
    """A housing trial fits the model kind its parameters name: ridge for an alpha, SGD for a
    learning rate, epochs or batch size (both: name the kind with ``model``)."""
    if "models" in values:
        return {}
    sgd = any(k in values for k in SGD_PARAMS)
    if sgd and "alphas" in values:
        raise ValueError("housing: give --param model=... to sweep both alpha and SGD's lr")
    return {"models": ["sgd"] if sgd else ["ridge"]}


HOUSING = Experiment(
    name="housing",
    flow="flows.housing:housing_regression",
    entrypoint="flows/housing.py:housing_regression",
    help="Linear regression on LIBSVM housing_scale: OLS, ridge per alpha, SGD tuned on val.",
    params=[
        Param("dataset", str, "housing_scale", "LIBSVM regression dataset.", data=True),
        Param(
            "models",
            list[str],
            list(HOUSING_MODELS),
            "Model kinds to fit.",
            choices=HOUSING_MODELS,
            alias="model",
        ),
        Param(
            "alphas",
            list[float],
            [1e-4, 1e-2, 1.0, 10.0, 100.0],
            "Ridge alphas.",
            minimum=0,
            alias="alpha",
        ),
        Param(
            "sgd_lrs",
            list[float],
            [0.001, 0.01, 0.05],
            "SGD learning rates to tune over.",
            minimum=0,
            exclusive=True,
            alias="lr",
            option="--sgd-lr",
        ),
        Param(
            "sgd_epochs",
            list[int],
            [200],
            "SGD epoch counts to tune over.",
            minimum=1,
            alias="epochs",
        ),
        Param("sgd_batch_size", int, 32, "SGD mini-batch size.", minimum=1, alias="batch_size"),
        Param("seed", int, 1234, "Seed of SGD's shuffling."),
        Param(
            "test_size",
            float,
            0.33,
            "Share of the rows held out for test.",
            minimum=0,
            maximum=1,
            exclusive=True,
            data=True,
        ),
        Param("split_random_state", int, 42, "Seed of the train/test split.", data=True),
        Param(
            "val_split",
            float,
            0.2,
            "Share of the training rows (the first ones) kept for validation.",
            minimum=0,
            maximum=1,
            exclusive=True,
            data=True,
        ),
        Param(
            "standardize",
            bool,
            True,
            "Standardize the features on the training rows "
            "(false: fit on the features as downloaded, which reproduces the course's "
            "printed ridge errors).",
            data=True,
        ),
        Param(
            "refresh_data",
            bool,
            False,
            "Run the data steps (fetch, split, standardize) again instead of taking the "
            "results Prefect cached from an earlier run on the same file and code.",
            option="--refresh",
            data=True,
        ),
    ],
    metrics={
        "best_val_mae": False,
        "best_val_mse": False,
        "best_train_mae": False,
        "best_train_mse": False,
    },  # fmt: skip
    reported=(
        "best_train_mae",
        "best_val_mae",
        "best_test_mae",
        "best_train_mse",
        "best_val_mse",
        "best_test_mse",
        "best_test_r2",
    ),
    model_name=lambda p: "housing-regressor",
    data_key=_housing_key,
    baseline="train-mean",
    baseline_metric="baseline_val_mae",
    # validation MAE in $1000s: the course's fits differ by about 0.1 from seed to seed
    regression_margin=0.25,
    trial_defaults=_housing_trial,
    trial_subflow=True,
)

_LR = {"digits": 1e-2, "cifar10": 1e-3}
_BATCH = {"digits": 25, "cifar10": 50}
_FILTERS = {"digits": 16, "cifar10": 32}
_FILTER_SIZE = {"digits": 3, "cifar10": 7}
_HIDDEN = {"digits": 64, "cifar10": 100}
_SCALE = {"digits": 0.1, "cifar10": 1e-3}

CONVNET = Experiment(
    name="convnet",
    flow="flows.convnet:convnet_training",
    entrypoint="flows/convnet.py:convnet_training",
    help="Train the course's ThreeLayerConvNet with Solver (gated by a gradient check).",
    params=[
        Param(
            "dataset",
            str,
            "digits",
            "digits (offline) or cifar10.",
            choices=("digits", "cifar10"),
            data=True,
        ),
        Param("epochs", int, 10, "Training epochs.", minimum=1),
        # lr 1e-2 with batch 25 for the 1,197 8x8 digits: chosen on a grid (lr 3e-3/1e-2/2e-2
        # x batch 25/50, adam, 3 epochs, seeds 0-2), val 0.96-0.97 after 3 epochs; cifar10:
        # the course's settings
        Param(
            "batch_size",
            int | None,
            None,
            "Mini-batch size.",
            per_dataset=_BATCH,
            minimum=1,
        ),
        Param("lr", float | None, None, "Learning rate.", per_dataset=_LR, minimum=0),
        Param(
            "update_rule",
            str,
            "adam",
            "Solver update rule.",
            choices="mlcore.nn.solver:UPDATE_RULES",
        ),
        Param("lr_decay", float, 1.0, "Learning rate factor after each epoch.", minimum=0),
        Param("reg", float, 0.0, "L2 regularisation.", minimum=0),
        Param(
            "hidden_dim",
            int | None,
            None,
            "Hidden layer size.",
            per_dataset=_HIDDEN,
            minimum=1,
        ),
        Param(
            "num_filters",
            int | None,
            None,
            "Convolution filters.",
            per_dataset=_FILTERS,
            minimum=1,
        ),
        Param(
            "filter_size",
            int | None,
            None,
            "Filter width.",
            per_dataset=_FILTER_SIZE,
            minimum=1,
        ),
        Param(
            "weight_scale",
            float | None,
            None,
            "Initial weight scale.",
            per_dataset=_SCALE,
            minimum=0,
        ),
        Param(
            "num_train", int | None, None, "Use the first N training rows.", minimum=1, data=True
        ),
        Param("seed", int, 0, "Seed of initialisation and minibatches."),
    ],
    metrics={"best_val_acc": True, "final_train_acc": True},
    reported=("best_val_acc", "final_train_acc", "test_acc"),
    timings=("epoch_seconds",),
    model_name=lambda p: f"{p['dataset']}-convnet",
    data_key=_convnet_key,
    baseline="majority",
    baseline_metric="baseline_val_acc",
    # a classifier must beat always guessing the training set's majority class by this much
    # validation accuracy: on the few hundred validation rows of digits, two binomial standard
    # errors of a chance-level rate (0.1) are about 0.045
    margin=0.05,
    # validation accuracy: two points on the few hundred validation images of digits
    regression_margin=0.02,
    resumable=True,
    gate="flows.convnet:gate",
    gate_on=("dataset", "filter_size"),
    skipped_model_tag=("mlcore.model", "skipped"),
)

GRADCHECK = Experiment(
    name="gradcheck",
    flow="flows.gradcheck:gradient_check_flow",
    entrypoint="flows/gradcheck.py:gradient_check_flow",
    help="Gradient-check every layer, sandwich and the ConvNet (fails if any is over threshold).",
    params=[
        Param(
            "layers",
            list[str] | None,
            None,
            "Checks to run (default: all).",
            choices="mlcore.nn.checks:GRADIENT_CHECKS",
        ),
        Param("seed", int, 231, "Seed of the random inputs (the course's 231)."),
    ],
)

PIPELINE = Experiment(
    name="pipeline",
    flow="flows.pipeline:pipeline",
    entrypoint="flows/pipeline.py:pipeline",
    help="The main job: housing regression, the gradient checks, the ConvNet on digits.",
    params=[
        Param("convnet_epochs", int, 10, "Epochs of the ConvNet training.", minimum=1),
        Param("seed", int, 0, "Seed of the ConvNet training."),
    ],
)

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (HOUSING, GRADCHECK, CONVNET, PIPELINE)}
SWEEPABLE = ("housing", "convnet")


def get(name: str, among: tuple[str, ...] | None = None) -> Experiment:
    """The experiment ``name`` (one of ``among``, default all), or a one-line error."""
    names = among or tuple(EXPERIMENTS)
    if name not in names:
        raise ValueError(f"unknown experiment {name!r}; expected one of {', '.join(names)}")
    return EXPERIMENTS[name]


def by_flow(flow_name: str) -> Experiment | None:
    """The experiment whose flow is called ``flow_name`` (the ``mlcore.flow`` tag)."""
    return next((e for e in EXPERIMENTS.values() if e.flow_name == flow_name), None)


def nested_tags(parent_run_id: str | None, tags: Mapping | None = None) -> dict[str, str]:
    """A flow run's extra MLflow tags: ``tags``, and the one that makes it a child of
    ``parent_run_id`` (a sweep's trial)."""
    nested = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    return {**(tags or {}), **nested}


def register_best(
    exp: Experiment, values: Mapping, model_uri: str, metric: str, value: float,
    run_id: str, baseline: float,
) -> dict[str, Any]:  # fmt: skip
    """Register a model of ``exp`` the way its declaration says (name, data key, baseline,
    margin), under the flow's resolved parameters ``values``."""
    from tasks.registry import register_model

    return register_model(
        model_uri, exp.model_name(values), metric, value, exp.metrics[metric],
        exp.data_key(values), run_id, baseline, exp.baseline, exp.margin,
        exp.regression_margin,
    )  # fmt: skip
