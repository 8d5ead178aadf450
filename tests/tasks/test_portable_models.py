"""Every logged model loads and predicts in a fresh virtual environment built from nothing but
its own requirements.txt, outside the project, with the numbers mlcore computes here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mlcore.linear import RidgeRegression
from mlcore.nn import ThreeLayerConvNet
from mlcore.preprocessing import Standardizer
from tasks import tracking

pytestmark = pytest.mark.slow

LOAD_AND_PREDICT = """
import json, sys
import numpy as np
import mlflow.pyfunc

model_dir, x_path, out_path = sys.argv[1:4]
model = mlflow.pyfunc.load_model(model_dir)
np.save(out_path, np.asarray(model.predict(np.load(x_path))))
import mlcore
import importlib.util
print(json.dumps({
    "mlcore": mlcore.__file__,
    "fast_extension": importlib.util.find_spec("mlcore.nn._fast") is not None,
    "heavy": sorted(m for m in ("scipy", "sklearn", "prefect", "matplotlib") if m in sys.modules),
}))
"""


@pytest.fixture(scope="module")
def logged_models(tmp_path_factory, _empty_mlflow_db, housing):
    """A ridge model and a small ConvNet logged by mlcore to a store of this module, each
    downloaded to a folder, with mlcore's own predictions for some inputs."""
    import shutil

    root = tmp_path_factory.mktemp("portable")
    shutil.copy(_empty_mlflow_db, root / "mlflow.db")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        scaler = Standardizer().fit(housing["X_train"])
        ridge = RidgeRegression(alpha=1.0).fit(
            scaler.transform(housing["X_train"]), housing["y_train"]
        )
        net = ThreeLayerConvNet(
            input_dim=(1, 8, 8), num_filters=4, filter_size=3, hidden_dim=10, weight_scale=0.1,
            seed=1,
        )  # fmt: skip
        images = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
        with tracking.parent_run("portable", "test", {"purpose": "portable"}) as run_id:
            linear_uri = tracking.log_pyfunc_model(
                run_id, "linear",
                {"mean": scaler.mean_, "scale": scaler.scale_, "weights": ridge.weights_},
                housing["X_test"][:5], name="linear",
            )  # fmt: skip
            convnet_uri = tracking.log_pyfunc_model(
                run_id, "convnet", {**net.params, "input_dim": np.asarray(net.input_dim)},
                images[:5], name="convnet", extra_pip=("mlcore",),
            )  # fmt: skip
        models = {}
        for kind, uri, X, expected in (
            ("linear", linear_uri, housing["X_test"],
             np.ravel(ridge.predict(scaler.transform(housing["X_test"])))),
            ("convnet", convnet_uri, images, net.predict(images)),
        ):  # fmt: skip
            path = mlflow.artifacts.download_artifacts(uri, dst_path=str(root / kind))
            models[kind] = {"dir": Path(path), "X": X, "expected": expected}
    finally:
        os.chdir(cwd)
        mlflow.set_tracking_uri(previous)
    return models


def test_requirements_pin_what_the_model_was_trained_with(logged_models):
    from importlib.metadata import version

    import pandas as pd

    expected = [
        f"mlflow-skinny=={version('mlflow-skinny')}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
    ]
    for model in logged_models.values():
        assert (model["dir"] / "requirements.txt").read_text().split() == expected
        shipped = model["dir"] / "code" / "mlcore"
        assert (shipped / "nn" / "cnn.py").read_bytes() == (
            tracking.PROJECT_DIR / "mlcore" / "nn" / "cnn.py"
        ).read_bytes()
        assert not list(shipped.rglob("*.so")) and not list(shipped.rglob("*.c"))


@pytest.fixture(scope="module")
def fresh_venv(logged_models, tmp_path_factory):
    """One virtual environment, outside the project, from the models' own requirements.txt
    (both models have the same one) and nothing else."""
    requirements = {
        m["dir"].joinpath("requirements.txt").read_text() for m in logged_models.values()
    }
    assert len(requirements) == 1
    outside = Path(tempfile.mkdtemp(prefix="mlcore-fresh-venv-"))
    venv = outside / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, cwd=outside)
    model_dir = next(iter(logged_models.values()))["dir"]
    # uv (the installer the project's Makefile uses) when it is there: pip resolving against
    # the package index took minutes; what gets installed is the same requirements.txt
    uv = shutil.which("uv") or next(
        (str(p) for p in [tracking.PROJECT_DIR / ".tools" / "uv" / "bin" / "uv"] if p.is_file()),
        None,
    )
    installer = (
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
        if uv
        else [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    )
    pip = subprocess.run(
        [*installer, "-r", str(model_dir / "requirements.txt")],
        cwd=outside, capture_output=True, text=True,
        env={**_clean_env(), "UV_PYTHON_DOWNLOADS": "never"},
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    yield {"python": venv / "bin" / "python", "cwd": outside}
    shutil.rmtree(outside, ignore_errors=True)


def _clean_env() -> dict[str, str]:
    """This machine's environment minus anything that would let the project leak in."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "MLFLOW_TRACKING_URI")
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_the_models_predict_in_a_fresh_venv_outside_the_project(fresh_venv, logged_models):
    """Both kinds in one test: they share the fresh venv (the slow part), which pytest-xdist
    would otherwise build once per worker."""
    for kind in ("linear", "convnet"):
        _predicts_outside(fresh_venv, logged_models[kind], kind)


def _predicts_outside(fresh_venv, model, kind: str) -> None:
    cwd = fresh_venv["cwd"]
    assert tracking.PROJECT_DIR not in cwd.parents
    no_mlcore = subprocess.run(
        [str(fresh_venv["python"]), "-c", "import mlcore"], cwd=cwd, capture_output=True,
        env=_clean_env(),
    )  # fmt: skip
    assert no_mlcore.returncode != 0  # mlcore only comes with the model
    x_path, out_path = cwd / f"{kind}-x.npy", cwd / f"{kind}-out.npy"
    np.save(x_path, model["X"])
    run = subprocess.run(
        [str(fresh_venv["python"]), "-c", LOAD_AND_PREDICT, str(model["dir"]), str(x_path),
         str(out_path)],
        cwd=cwd, capture_output=True, text=True, env=_clean_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(report["mlcore"]).is_relative_to(model["dir"] / "code")
    assert report["fast_extension"] is False and report["heavy"] == []
    got = np.load(out_path, allow_pickle=False)
    if kind == "linear":
        np.testing.assert_allclose(np.ravel(got), model["expected"], rtol=1e-12)
    else:
        np.testing.assert_array_equal(got, model["expected"])
