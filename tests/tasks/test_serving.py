"""Scoring with registered models: ``mlflow models serve`` over REST and ``mlcore predict`` on
CSV and .npy files, both against the model's own predictions."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.stack import free_port
from mlcore.linear import RidgeRegression
from mlcore.nn import ThreeLayerConvNet
from mlcore.preprocessing import Standardizer
from tasks import tracking
from tasks.registry import housing_data_key, register_model
from tests.conftest import one_line_error

pytestmark = pytest.mark.slow

runner = CliRunner()
ENV = {"COLUMNS": "300"}
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def champion(mlflow_store, housing):
    """A ridge model on the real housing training rows, registered as housing-regressor's
    champion; returns mlcore's own predictions for the raw test rows too."""
    scaler = Standardizer().fit(housing["X_train"])
    model = RidgeRegression(alpha=1.0).fit(scaler.transform(housing["X_train"]), housing["y_train"])
    with tracking.parent_run("housing", "test", {"purpose": "serving"}) as run_id:
        weights = {"mean": scaler.mean_, "scale": scaler.scale_, "weights": model.weights_}
        uri = tracking.log_pyfunc_model(run_id, "linear", weights, housing["X_test"][:5])
        key = housing_data_key("housing_scale", 0.33, 42, 0.2)
        reg = register_model.fn(
            uri, "housing-regressor", "best_val_mae", 3.0, False, key, run_id, 6.0
        )
    assert reg["promoted"]
    X = housing["X_test"]
    return {"uri": mlflow_store, "X": X, "expected": np.ravel(model.predict(scaler.transform(X)))}


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_mlflow_models_serve_answers_with_the_same_numbers(champion, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": champion["uri"],
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve"]
    cmd += ["-m", "models:/housing-regressor@champion", "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 120 s"
            time.sleep(0.5)
        X = champion["X"]
        served = np.asarray(_post(f"{base}/invocations", {"inputs": X.tolist()})["predictions"])
        in_process = mlflow.pyfunc.load_model("models:/housing-regressor@champion").predict(X)
        np.testing.assert_allclose(np.ravel(served), np.ravel(in_process), rtol=1e-12)
        np.testing.assert_allclose(np.ravel(served), champion["expected"], rtol=1e-12)
        assert served.shape == (len(X),)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_predict_a_csv_with_or_without_header_and_a_npy(champion, tmp_path):
    X, expected = champion["X"], champion["expected"]
    with_header = tmp_path / "rows.csv"
    header = ",".join(f"x{j + 1}" for j in range(X.shape[1]))
    np.savetxt(with_header, X, delimiter=",", header=header, comments="", fmt="%.17g")
    bare = tmp_path / "bare.csv"
    np.savetxt(bare, X[:7], delimiter=",", fmt="%.17g")
    npy = tmp_path / "rows.npy"
    np.save(npy, X)
    uri = "models:/housing-regressor@champion"
    for path, n in ((with_header, len(X)), (bare, 7), (npy, len(X))):
        result = runner.invoke(app, ["predict", uri, str(path)], env=ENV)
        assert result.exit_code == 0, result.output
        got = np.array([float(line) for line in result.output.splitlines()])
        np.testing.assert_allclose(got, expected[:n], rtol=1e-12)
    out = tmp_path / "pred.csv"
    result = runner.invoke(
        app, ["predict", "models:/housing-regressor/1", str(npy), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "prediction" and len(lines) == len(X) + 1
    np.testing.assert_allclose([float(v) for v in lines[1:]], expected, rtol=1e-12)


def test_predict_reshapes_flat_rows_to_the_convnet_input(mlflow_store, tmp_path):
    rng = np.random.default_rng(0)
    model = ThreeLayerConvNet(
        input_dim=(1, 8, 8), num_filters=4, filter_size=3, hidden_dim=10, weight_scale=0.1, seed=1
    )
    X = rng.standard_normal((12, 1, 8, 8)).astype(np.float32)
    with tracking.parent_run("convnet", "test", {"purpose": "serving"}) as run_id:
        arrays = {**model.params, "input_dim": np.asarray(model.input_dim)}
        uri = tracking.log_pyfunc_model(run_id, "convnet", arrays, X[:5], extra_pip=("mlcore",))
    flat = tmp_path / "images.csv"
    np.savetxt(flat, X.reshape(12, -1), delimiter=",", fmt="%.9g")
    result = runner.invoke(app, ["predict", uri, str(flat)], env=ENV)
    assert result.exit_code == 0, result.output
    assert [int(v) for v in result.output.split()] == model.predict(X).tolist()
    wrong = tmp_path / "wrong.csv"
    np.savetxt(wrong, X.reshape(12, -1)[:, :60], delimiter=",")
    one_line_error(
        runner.invoke(app, ["predict", uri, str(wrong)], env=ENV),
        r"error: wrong\.csv: the model expects input of shape \(-1, 1, 8, 8\) "
        r"\(64 features per row\), got shape \(12, 60\)",
    )


def test_predict_errors_are_one_line(champion, tmp_path):
    uri = "models:/housing-regressor@champion"
    csv = tmp_path / "twelve.csv"
    np.savetxt(csv, champion["X"][:3, :12], delimiter=",")
    one_line_error(
        runner.invoke(app, ["predict", uri, str(csv)], env=ENV),
        r"the model expects input of shape \(-1, 13\) \(13 features per row\), got shape \(3, 12\)",
    )
    one_line_error(
        runner.invoke(app, ["predict", uri, str(tmp_path / "missing.csv")], env=ENV),
        r"error: no input file '.*missing\.csv'",
    )
    one_line_error(
        runner.invoke(app, ["predict", "models:/no-such-model@champion", str(csv)], env=ENV),
        r"error: cannot load model 'models:/no-such-model@champion'",
    )
    text = tmp_path / "text.csv"
    text.write_text("a,b\n1,x\n")
    one_line_error(
        runner.invoke(app, ["predict", uri, str(text)], env=ENV),
        r"error: .*text\.csv \(rows counted after the header\): could not convert string 'x'",
    )


FOREIGN_CODE = """
import os
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class Foreign(PythonModel):
    def load_context(self, context):
        with np.load(context.artifacts["weights"], allow_pickle=False) as f:
            self.w = f["w"]

    def predict(self, context, model_input, params=None):
        return np.asarray(model_input, dtype=np.float64) @ self.w


open(os.environ["FOREIGN_MARKER"], "a").write("ran\\n")
mlflow.models.set_model(Foreign())
"""


def test_predict_loads_only_what_mlcore_wrote(mlflow_store, housing, tmp_path, monkeypatch):
    """A scikit-learn model and a models-from-code file that claims to be mlcore's linear
    kind are refused before any of their code runs; --trust-model loads them."""
    from mlflow.models import Model
    from sklearn.linear_model import LinearRegression

    X, y = housing["X_train"], np.ravel(housing["y_train"])
    sk = LinearRegression().fit(X, y)
    marker = tmp_path / "marker"
    monkeypatch.setenv("FOREIGN_MARKER", str(marker))
    code = tmp_path / "foreign.py"
    code.write_text(FOREIGN_CODE)
    w = np.arange(13, dtype=np.float64)
    np.savez(tmp_path / "weights.npz", w=w)
    with tracking.parent_run("housing", "test", {"purpose": "foreign"}) as run_id:
        sk_uri = mlflow.sklearn.log_model(
            sk, name="sk", run_id=run_id, pip_requirements=["scikit-learn"]
        ).model_uri
        fake_uri = Model.log(
            artifact_path=None, name="fake", flavor=mlflow.pyfunc, run_id=run_id,
            python_model=str(code), artifacts={"weights": str(tmp_path / "weights.npz")},
            metadata={"mlcore_kind": "linear"}, pip_requirements=["numpy"],
        ).model_uri  # fmt: skip
    marker.unlink(missing_ok=True)  # logging ran the file once
    csv = tmp_path / "rows.csv"
    np.savetxt(csv, housing["X_test"][:6], delimiter=",", fmt="%.17g")
    one_line_error(
        runner.invoke(app, ["predict", sk_uri, str(csv)], env=ENV),
        rf"error: refusing to load '{sk_uri}': its flavors are python_function, sklearn, not "
        r"python_function only; .* \(pass --trust-model to load it anyway",
    )
    one_line_error(
        runner.invoke(app, ["predict", fake_uri, str(csv)], env=ENV),
        rf"error: refusing to load '{fake_uri}': its code file 'foreign.py' is not this mlcore's "
        r"tasks/pyfunc/linear.py",
    )
    assert not marker.exists()  # refused before loading: the foreign file never ran
    trusted = runner.invoke(app, ["predict", sk_uri, str(csv), "--trust-model"], env=ENV)
    assert trusted.exit_code == 0, trusted.output
    got = [float(v) for v in trusted.output.split()]
    np.testing.assert_allclose(got, sk.predict(housing["X_test"][:6]), rtol=1e-12)
    trusted = runner.invoke(app, ["predict", fake_uri, str(csv), "--trust-model"], env=ENV)
    assert trusted.exit_code == 0, trusted.output
    np.testing.assert_allclose(
        [float(v) for v in trusted.output.split()], housing["X_test"][:6] @ w, rtol=1e-12
    )
    assert marker.read_text() == "ran\n"
    help_text = runner.invoke(app, ["predict", "--help"], env=ENV).output
    assert "--trust-model" in help_text and "can run code" in " ".join(help_text.split())
