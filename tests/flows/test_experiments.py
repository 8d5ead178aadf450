"""The experiment registry and the one parser: the same text means the same value in every
command, prefect.yaml agrees with the registry, the docs' tables are generated from it."""

import inspect
from pathlib import Path

import pytest
import yaml

from flows import parameter_docs
from flows.deployments import deployment_problems
from flows.experiments import CONVNET, EXPERIMENTS, HOUSING
from flows.params import parse, parse_overrides
from flows.space import flow_arguments, parse_fixed, parse_space

REPO = Path(__file__).resolve().parents[2]


def test_each_flow_takes_its_defaults_from_the_registry():
    for exp in EXPERIMENTS.values():
        signature = inspect.signature(exp.load_flow().fn).parameters
        for param in exp.params:
            assert signature[param.name].default == param.default, (exp.name, param.name)
        # and every argument of the flow a user may give is declared (the rest are set by
        # mlcore itself: nesting under a sweep, tags, registration, resuming, what a sweep's
        # lean trial skips)
        internal = {"parent_run_id", "run_tags", "registry", "resume", "log_model", "gate"}
        assert set(signature) - internal == {p.name for p in exp.params}, exp.name


def test_the_same_text_is_the_same_value_in_every_command():
    """1e3 is an integer everywhere (run, sweep --set, rerun/trigger --set); 2.5 is refused
    everywhere, naming the parameter."""
    epochs = CONVNET.param("epochs")
    assert parse(epochs, "1e3", "--epochs") == 1000
    assert parse_overrides(CONVNET, ["epochs=1e3"]) == {"epochs": 1000}
    assert parse_fixed("convnet", ["epochs=1e3"], {})["epochs"] == 1000
    assert parse_space("convnet", ["epochs=1e1,2e1"])["epochs"].choices == (10, 20)
    for call in (
        lambda: parse(epochs, "2.5", "--epochs"),
        lambda: parse_overrides(CONVNET, ["epochs=2.5"]),
        lambda: parse_fixed("convnet", ["epochs=2.5"], {}),
    ):
        with pytest.raises(ValueError, match=r"epochs: '2.5' is not a valid int$"):
            call()
    with pytest.raises(ValueError, match=r"--set epochs: 0 must be >= 1$"):
        parse_overrides(CONVNET, ["epochs=0"])
    with pytest.raises(ValueError, match=r"--set epochs: 0 must be >= 1$"):
        parse_fixed("convnet", ["epochs=0"], {})
    with pytest.raises(ValueError, match=r"--param lr: -1.0 must be >= 0$"):
        parse_space("convnet", ["lr=-1..1"])


def test_parser_types_lists_none_and_bools():
    alphas = HOUSING.param("alphas")
    assert parse(alphas, "1, 1e-2", "--alphas") == [1.0, 0.01]
    assert parse(alphas, "[1, 10]", "--alphas") == [1.0, 10.0]
    with pytest.raises(ValueError, match=r"--alphas: empty list"):
        parse(alphas, " , ", "--alphas")
    with pytest.raises(ValueError, match=r"--alphas: 'x' is not a valid float"):
        parse(alphas, "1,x", "--alphas")
    assert parse(CONVNET.param("lr"), "none", "--lr") is None
    with pytest.raises(ValueError, match=r"--epochs: 'none' is not a valid int"):
        parse(CONVNET.param("epochs"), "none", "--epochs")
    for text, value in (("yes", True), ("0", False), ("False", False)):
        assert parse(HOUSING.param("standardize"), text, "--set standardize") is value
    with pytest.raises(ValueError, match=r"'adagrad' is not one of sgd, sgd_momentum"):
        parse(CONVNET.param("update_rule"), "adagrad", "--update-rule")
    with pytest.raises(ValueError, match=r"--set: housing_regression has no parameter 'beta'"):
        parse_overrides(HOUSING, ["beta=1"])


def test_per_dataset_defaults_resolve_from_the_declaration():
    digits = CONVNET.resolve({"dataset": "digits"})
    assert (digits["lr"], digits["batch_size"], digits["filter_size"]) == (1e-2, 25, 3)
    cifar = CONVNET.resolve({"dataset": "cifar10", "lr": 0.5})
    assert (cifar["lr"], cifar["batch_size"], cifar["filter_size"]) == (0.5, 50, 7)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        CONVNET.resolve({"dataset": "mnist"})


def test_a_trial_is_the_flow_with_one_item_of_each_swept_list():
    fixed = parse_fixed("housing", ["sgd_epochs=20"], {})
    assert flow_arguments(HOUSING, {"lr": 0.01}, fixed) == {
        **fixed, "sgd_lrs": [0.01], "sgd_epochs": [20], "models": ["sgd"],
    }  # fmt: skip
    assert flow_arguments(HOUSING, {"alpha": 10.0}, parse_fixed("housing", [], {}))["models"] == [
        "ridge"
    ]
    both = flow_arguments(HOUSING, {"model": "ols"}, parse_fixed("housing", ["alpha=3"], {}))
    assert both["models"] == ["ols"] and both["alphas"] == [3.0]
    with pytest.raises(ValueError, match=r"give --param model=\.\.\. to sweep both"):
        flow_arguments(HOUSING, {"alpha": 1.0, "lr": 0.1}, parse_fixed("housing", [], {}))


def test_prefect_yaml_agrees_with_the_registry():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert deployment_problems(config) == []
    weekly = next(d for d in config["deployments"] if d["name"] == "weekly")
    weekly["parameters"].update({"epochs": 0, "momentum": 0.9, "lr": 0.02})
    nightly = next(d for d in config["deployments"] if d["name"] == "nightly")
    nightly["parameters"]["seed"] = 99
    assert deployment_problems(config) == [
        "deployment 'nightly': seed is 99, the registry's default is 1234",
        "deployment 'weekly': epochs: 0 must be >= 1",
        "deployment 'weekly': convnet has no parameter 'momentum'",
        "deployment 'weekly': lr is 0.02, the registry's default is 0.01 for digits",
    ]


def test_docs_parameter_tables_are_generated_from_the_registry():
    page = REPO / "docs" / "experiments.md"
    text = page.read_text()
    assert parameter_docs.render_docs(text) == text, "run `make docs` to regenerate the tables"
    for name in ("housing", "convnet"):
        assert parameter_docs.parameter_table(EXPERIMENTS[name]) in text
