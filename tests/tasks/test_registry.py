"""The model registry: versions with their metric and data tags, ``champion`` moved only by a
strict win on the same validation data, and the flows registering their best model."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from flows.convnet import convnet_training
from flows.experiments import CONVNET
from flows.housing import housing_regression
from flows.stack import free_port, start_mlflow_server
from mlcore.linear import RidgeRegression
from mlcore.preprocessing import Standardizer
from tasks import tracking
from tasks.promotion_lock import LOCK_PREFIX, lock_path, promotion_lock, store_lock
from tasks.registry import (
    convnet_data_key,
    housing_data_key,
    majority_baseline,
    mean_baseline,
    register_model,
)

pytestmark = pytest.mark.slow

HOUSING_KEY = housing_data_key("housing_scale", 0.33, 42, 0.2)


@pytest.fixture
def logged(mlflow_store, housing):
    """A ridge model fitted on the real training rows, logged to a fresh parent run."""
    scaler = Standardizer().fit(housing["X_train"])
    model = RidgeRegression(alpha=1.0).fit(scaler.transform(housing["X_train"]), housing["y_train"])
    with tracking.parent_run("housing", "test", {"purpose": "registry"}) as run_id:
        weights = {"mean": scaler.mean_, "scale": scaler.scale_, "weights": model.weights_}
        uri = tracking.log_pyfunc_model(run_id, "linear", weights, housing["X_test"][:5])
    return {"run_id": run_id, "uri": uri, "model": model, "scaler": scaler}


def test_champion_moves_only_on_a_strict_win_on_the_same_data(logged):
    uri, run_id = logged["uri"], logged["run_id"]

    def register(value, key=HOUSING_KEY):
        return register_model.fn(uri, "m", "best_val_mae", value, False, key, run_id, 10.0)

    first = register(3.0)
    assert first == {
        "name": "m",
        "version": "1",
        "champion_version": "1",
        "promoted": True,
        "reason": "first champion (best_val_mae=3)",
        "registered": True,
        "gate": "best_val_mae 3 < baseline 10",
        "regressed": None,
    }
    worse = register(3.5)
    assert (worse["version"], worse["champion_version"], worse["promoted"]) == ("2", "1", False)
    assert worse["reason"] == "champion stays version 1: its best_val_mae=3 is not beaten by 3.5"
    tie = register(3.0)
    assert (tie["champion_version"], tie["promoted"]) == ("1", False)
    other_data = register(2.5, key=convnet_data_key("digits", None))
    assert (other_data["champion_version"], other_data["promoted"]) == ("1", False)
    assert "measured on other validation data" in other_data["reason"]
    assert tracking.client().get_run(run_id).data.tags["champion"] == "false"
    better = register(2.5)
    assert better["promoted"] and better["champion_version"] == better["version"] == "5"
    assert better["reason"] == "beats champion version 1 on best_val_mae: 2.5 vs 3"

    client = MlflowClient()
    assert client.get_registered_model("m").aliases == {"champion": 5}
    assert client.get_model_version("m", "2").tags == {
        "best_val_mae": "3.5",
        "data_key": HOUSING_KEY,
        "flow_run_id": run_id,
    }
    assert (
        client.get_model_version("m", "4").tags["data_key"] == "digits:split=default:num_train=None"
    )
    tags = client.get_run(run_id).data.tags
    assert (tags["registered_model"], tags["registered_version"], tags["champion"]) == (
        "m",
        "5",
        "true",
    )


def test_a_model_worse_than_the_champion_by_more_than_the_margin_is_signalled(logged):
    uri, client = logged["uri"], MlflowClient()
    experiment = client.get_run(logged["run_id"]).info.experiment_id

    def register(value, key=HOUSING_KEY, name="m", higher=False, metric="best_val_mae"):
        run_id = client.create_run(experiment).info.run_id
        baseline = 0.1 if higher else 10.0
        out = register_model.fn(uri, name, metric, value, higher, key, run_id, baseline,
                                "baseline", 0.0, 0.25 if not higher else 0.02)  # fmt: skip
        return out, client.get_run(run_id).data.tags.get("mlcore.regressed")

    for _ in range(2):  # no champion yet, then a tie
        out, tag = register(3.0)
        assert out["regressed"] is None and tag is None
    within, tag = register(3.2)  # worse by 0.2: within the margin
    assert within["regressed"] is None and tag is None
    worse, tag = register(3.4)
    assert worse["regressed"]["worse_by"] == pytest.approx(0.4)
    assert worse["regressed"]["champion_run_id"] and worse["regressed"]["champion"] == 3.0
    summary = (
        "best_val_mae 3.4 vs 3 of m version 1 (champion): worse by 0.4, more than the margin 0.25"
    )
    assert tag == worse["regressed"]["summary"] == summary
    assert worse["champion_version"] == "1" and not worse["promoted"]
    other, tag = register(9.0, key=convnet_data_key("digits", None))  # other data: no compare
    assert other["regressed"] is None and tag is None
    # a model the registration gate refuses (worse than the baseline) regressed all the same
    refused, tag = register(11.0)
    assert refused["version"] is None and tag.startswith("best_val_mae 11 vs 3 of m version 1")
    # higher is better: accuracy 0.05 under the champion's, margin 0.02
    register(0.9, key="k", name="acc", higher=True, metric="best_val_acc")
    lower, tag = register(0.85, key="k", name="acc", higher=True, metric="best_val_acc")
    assert lower["regressed"]["worse_by"] == pytest.approx(0.05) and "worse by 0.05" in tag
    assert client.get_registered_model("m").aliases == {"champion": 1}


def test_higher_is_better_and_exact_values(logged):
    uri, run_id = logged["uri"], logged["run_id"]
    value = 0.1 + 0.2  # not representable in a few digits: the tag must keep it exactly
    first = register_model.fn(uri, "acc", "best_val_acc", value, True, "k", run_id, 0.1)
    lower = register_model.fn(uri, "acc", "best_val_acc", 0.25, True, "k", run_id, 0.1)
    higher = register_model.fn(uri, "acc", "best_val_acc", 0.9, True, "k", run_id, 0.1)
    assert [r["promoted"] for r in (first, lower, higher)] == [True, False, True]
    assert float(MlflowClient().get_model_version("acc", "1").tags["best_val_acc"]) == value
    assert MlflowClient().get_registered_model("acc").aliases == {"champion": 3}


def test_a_registered_version_has_signature_example_and_predicts(logged, housing):
    register_model.fn(
        logged["uri"], "m", "best_val_mae", 3.0, False, HOUSING_KEY, logged["run_id"], 6.0
    )
    info = mlflow.models.get_model_info("models:/m@champion")
    assert info.signature.inputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": (-1, 13)}}
    ]
    loaded = mlflow.pyfunc.load_model("models:/m/1")
    np.testing.assert_array_equal(loaded.input_example, housing["X_test"][:5])
    expected = np.ravel(logged["model"].predict(logged["scaler"].transform(housing["X_test"])))
    np.testing.assert_allclose(loaded.predict(housing["X_test"]), expected, rtol=1e-12)


def test_data_keys_name_the_validation_data():
    assert HOUSING_KEY == (
        "housing_scale:sha256=bbacd2f526a038499717d5dc4b8895e6baf1e2351895b9360a84bcb31e104476"
        ":test_size=0.33:split_random_state=42:val_split=0.2"
    )
    assert housing_data_key("housing_scale", 0.33, 42, 0.25) != HOUSING_KEY
    assert convnet_data_key("digits", 400) == "digits:split=default:num_train=400"


def test_housing_flow_registers_its_best_model(prefect_harness, data_env, mlflow_store):
    small = {"alphas": [1e-4, 1.0], "sgd_lrs": [0.01], "sgd_epochs": [50]}
    first = housing_regression(**small)
    reg = first["registered"]
    assert reg["name"] == "housing-regressor" and reg["promoted"] and reg["version"] == "1"
    client = MlflowClient()
    version = client.get_model_version("housing-regressor", "1")
    assert float(version.tags["best_val_mae"]) == first["best"]["val_mae"]
    assert version.tags["data_key"] == HOUSING_KEY
    assert version.tags["flow_run_id"] == first["run_id"]
    assert version.run_id == first["best"]["run_id"]
    tags = client.get_run(first["run_id"]).data.tags
    assert (tags["registered_model"], tags["registered_version"], tags["champion"]) == (
        "housing-regressor",
        "1",
        "true",
    )
    # the gate compared with predicting the training mean on the validation rows
    from mlcore.data import load_libsvm, split_like_course

    split = split_like_course(*load_libsvm(data_env / "housing_scale"))
    baseline = mean_baseline(split["y_train"], split["y_val"])
    assert tags["registered"] == "true"
    assert tags["registration_gate"] == (
        f"best_val_mae {first['best']['val_mae']:.4g} < train-mean {baseline:.4g}"
    )
    # the same flow again ties the champion: a tie is no win
    second = housing_regression(**small)
    assert second["best"]["val_mae"] == first["best"]["val_mae"]
    assert second["registered"]["version"] == "2" and not second["registered"]["promoted"]
    assert client.get_registered_model("housing-regressor").aliases == {"champion": 1}
    assert client.get_run(second["run_id"]).data.tags["champion"] == "false"


def test_convnet_flow_registers_under_the_dataset_name(prefect_harness, mlflow_store):
    result = convnet_training(
        epochs=5, lr=1e-2, num_train=200, hidden_dim=16, num_filters=4, seed=0
    )
    reg = result["registered"]
    assert (reg["name"], reg["version"], reg["promoted"]) == ("digits-convnet", "1", True)
    version = MlflowClient().get_model_version("digits-convnet", "1")
    assert float(version.tags["best_val_acc"]) == result["best_val_acc"]
    assert version.tags["data_key"] == "digits:split=default:num_train=200"
    info = mlflow.models.get_model_info("models:/digits-convnet@champion")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 8, 8)
    tags = MlflowClient().get_run(result["run_id"]).data.tags
    majority = _digits_majority_rate(200)
    assert tags["registered"] == "true" and result["best_val_acc"] > majority + CONVNET.margin
    assert tags["registration_gate"] == (
        f"best_val_acc {result['best_val_acc']:.4g} > majority {majority:.4g} + 0.05"
    )


def _digits_majority_rate(num_train: int) -> float:
    from mlcore.data.images import load_image_dataset

    data = load_image_dataset("digits")
    return majority_baseline(data["y_train"][:num_train], data["y_val"])


def test_a_chance_level_convnet_is_not_registered(prefect_harness, mlflow_store):
    """Learning rate 0: the network stays at its random initialisation."""
    result = convnet_training(epochs=1, num_train=200, hidden_dim=16, num_filters=4, seed=0, lr=0.0)
    reg = result["registered"]
    assert not reg["registered"] and reg["version"] is None and not reg["promoted"]
    majority = _digits_majority_rate(200)
    assert result["best_val_acc"] <= majority + CONVNET.margin
    gate = f"best_val_acc {result['best_val_acc']:.4g} <= majority {majority:.4g} + 0.05"
    tags = MlflowClient().get_run(result["run_id"]).data.tags
    assert (tags["registered"], tags["registration_gate"]) == ("false", gate)
    assert "registered_version" not in tags
    assert MlflowClient().search_registered_models() == []


def test_baselines_match_scikit_learns_dummy_estimators(housing):
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.metrics import accuracy_score, mean_absolute_error

    y_train, y_val = np.ravel(housing["y_train"]), np.ravel(housing["y_val"])
    dummy = DummyRegressor(strategy="mean").fit(np.zeros((len(y_train), 1)), y_train)
    expected = mean_absolute_error(y_val, dummy.predict(np.zeros((len(y_val), 1))))
    assert mean_baseline(housing["y_train"], housing["y_val"]) == pytest.approx(expected, 1e-12)

    rng = np.random.default_rng(0)
    labels_train, labels_val = rng.integers(0, 4, 300) ** 2, rng.integers(0, 5, 80) ** 2
    clf = DummyClassifier(strategy="most_frequent").fit(np.zeros((300, 1)), labels_train)
    expected = accuracy_score(labels_val, clf.predict(np.zeros((80, 1))))
    assert majority_baseline(labels_train, labels_val) == expected


def test_the_gate_refuses_a_model_no_better_than_the_trivial_baseline(logged):
    uri, run_id = logged["uri"], logged["run_id"]
    acc = register_model.fn(
        uri, "c", "best_val_acc", 0.14, True, "k", run_id, 0.1, "majority", CONVNET.margin
    )
    assert acc == {
        "name": "c",
        "version": None,
        "champion_version": None,
        "promoted": False,
        "reason": "not registered: does not beat the trivial baseline "
        "(best_val_acc 0.14 <= majority 0.1 + 0.05)",
        "registered": False,
        "gate": "best_val_acc 0.14 <= majority 0.1 + 0.05",
        "regressed": None,
    }
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["registered"] == "false"
    assert tags["registration_gate"] == "best_val_acc 0.14 <= majority 0.1 + 0.05"
    assert "registered_version" not in tags and "champion" not in tags
    mae = register_model.fn(uri, "r", "best_val_mae", 6.5, False, "k", run_id, 6.5, "train-mean")
    assert not mae["registered"] and mae["gate"] == "best_val_mae 6.5 >= train-mean 6.5"
    assert MlflowClient().search_registered_models() == []
    # just above the margin passes
    ok = register_model.fn(
        uri, "c", "best_val_acc", 0.16, True, "k", run_id, 0.1, "majority", CONVNET.margin
    )
    assert ok["registered"] and ok["version"] == "1" and ok["promoted"]
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["registered"] == "true"
    assert tags["registration_gate"] == "best_val_acc 0.16 > majority 0.1 + 0.05"


RACE_WORKER = """
import json, os, sys, time
from pathlib import Path
from tasks.registry import register_model

go, value, uri, run_id = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
Path(sys.argv[5]).touch()
while not go.exists():
    time.sleep(0.005)
out = register_model.fn(uri, "race", "best_val_mae", value, False, "k", run_id, 100.0)
print("RESULT " + json.dumps(out))
"""


def test_concurrent_promotions_leave_one_consistent_champion(
    logged, mlflow_store, tmp_path, request
):
    """Four processes register at the same instant through one MLflow server, as on four
    machines (each its own temporary folder and home: no file is shared): the promotions form
    one chain of strict wins, the alias ends on the best version, and no lock is left."""
    import json
    import os
    import subprocess
    import sys
    import time

    values = [3.0, 2.0, 1.5, 2.5]
    go = tmp_path / "go"
    experiment = tracking.experiment_id("race")
    runs = [tracking.client().create_run(experiment).info.run_id for _ in values]  # one a flow
    server = start_mlflow_server(
        port=free_port(), backend_uri=mlflow_store, artifacts=tmp_path / "mlartifacts",
        log=tmp_path / "mlflow-server.log",
    )  # fmt: skip
    request.addfinalizer(server.stop)
    server.wait_healthy(180)

    def machine(i: int) -> dict[str, str]:  # a folder of its own for each: no shared file
        own = tmp_path / f"machine-{i}"
        (own / "tmp").mkdir(parents=True)
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "MLFLOW_TRACKING_URI": server.url, "PYTHONPATH": str(tracking.PROJECT_DIR),
            "TMPDIR": str(own / "tmp"), "HOME": str(own),
        }  # fmt: skip

    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACE_WORKER,
                str(go),
                repr(v),
                logged["uri"],
                runs[i],
                str(tmp_path / f"ready-{i}"),
            ],
            env=machine(i),
            cwd=tmp_path / f"machine-{i}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i, v in enumerate(values)
    ]
    while len(list(tmp_path.glob("ready-*"))) < len(values):  # every worker has imported mlflow
        assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs]
        time.sleep(0.05)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
    client = MlflowClient()
    value_of = {
        str(v.version): float(v.tags["best_val_mae"])
        for v in client.search_model_versions("name='race'")
    }
    assert sorted(value_of.values()) == sorted(values)
    champion = str(client.get_registered_model("race").aliases["champion"])
    assert value_of[champion] == min(values)
    # each promotion took the alias from the holder it compared against: one chain from a
    # single "first champion" to the best, every link a strict win
    promoted = {r["version"]: r for r in results if r["promoted"]}
    firsts = [v for v, r in promoted.items() if r["reason"].startswith("first champion")]
    assert len(firsts) == 1, [r["reason"] for r in results]
    beaten = {}
    for version, r in promoted.items():
        if version != firsts[0]:
            previous = r["reason"].split("beats champion version ")[1].split(" ")[0]
            assert value_of[version] < value_of[previous]
            beaten[previous] = version
    assert len(beaten) == len(promoted) - 1  # no holder was taken over twice
    chain, link = [firsts[0]], firsts[0]
    while link in beaten:
        link = beaten[link]
        chain.append(link)
    assert set(chain) == set(promoted) and chain[-1] == champion
    assert [m.name for m in client.search_registered_models()] == ["race"]  # the lock is gone
    for r, run_id in zip(results, runs, strict=True):  # each flow's run says what it got
        tags = client.get_run(run_id).data.tags
        assert (tags["registered_version"], tags["champion"]) == (
            r["version"],
            str(r["promoted"]).lower(),
        )
        if not r["promoted"]:  # it lost against a holder that really was better
            holder = r["reason"].split("champion stays version ")[1].split(":")[0]
            assert value_of[holder] <= value_of[r["version"]]


def test_the_promotion_lock_sits_beside_a_local_store(tmp_path):
    assert lock_path(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db.registry.lock"
    assert lock_path("sqlite:///mlflow.db") == Path("mlflow.db.registry.lock")
    assert lock_path(str(tmp_path / "mlruns")) == tmp_path / "mlruns" / ".registry.lock"
    assert lock_path(f"file://{tmp_path}/mlruns") == tmp_path / "mlruns" / ".registry.lock"
    assert lock_path("http://127.0.0.1:5000") is None  # held in the store: `store_lock`
    assert lock_path("postgresql://u@127.0.0.1:5432/mlflow") is None


def _blocked_while_held(lock) -> list[str]:
    """What happens to a second taker of ``lock()`` (a context manager factory) in another
    thread while this thread holds it for 1 s: the order of the events."""
    import threading
    import time

    events: list[str] = []
    taken = threading.Event()

    def second():
        taken.wait()
        with lock():
            events.append("second took it")

    thread = threading.Thread(target=second)
    thread.start()
    with lock():
        taken.set()
        time.sleep(1.0)
        events.append("first let go")
    thread.join(30)
    return events


def test_the_promotion_lock_excludes_a_second_taker(mlflow_store):
    """The file lock of a local store, and the lock held in the store itself (which a server
    store uses), each keep a second taker out until the first lets go; a crashed holder's
    store lock is taken over after the stale time, and a waiter gives up with a named error."""
    assert _blocked_while_held(lambda: promotion_lock(mlflow_store, "m")) == [
        "first let go", "second took it"
    ]  # fmt: skip
    client = tracking.client()
    assert _blocked_while_held(lambda: store_lock(client, f"{LOCK_PREFIX}m")) == [
        "first let go", "second took it"
    ]  # fmt: skip
    assert client.search_registered_models() == []  # released: deleted
    crashed = store_lock(client, f"{LOCK_PREFIX}m")
    crashed.__enter__()  # never released
    with pytest.raises(TimeoutError, match=r"registry lock 'mlcore-lock.m' was held by"):
        with store_lock(client, f"{LOCK_PREFIX}m", stale=60, wait=0.5):
            pass
    with store_lock(client, f"{LOCK_PREFIX}m", stale=0.5):
        assert [m.name for m in client.search_registered_models()] == [f"{LOCK_PREFIX}m"]
    assert client.search_registered_models() == []


def test_a_store_lock_let_go_while_a_taker_asks_is_taken_not_an_error(mlflow_store):
    """The holder lets go between a taker's failed create and MLflow's read-back of the
    holder, so MLflow answers RESOURCE_DOES_NOT_EXIST (as it did in a four-process race
    through a server): the taker tries again and takes the lock."""
    from mlflow.exceptions import MlflowException

    client = tracking.client()
    lock = f"{LOCK_PREFIX}m"
    holder = store_lock(client, lock)
    holder.__enter__()
    calls: list[str] = []

    class LetGoInBetween:  # the real client; its first create sees the holder let go mid-call
        def __getattr__(self, name):
            return getattr(client, name)

        def create_registered_model(self, name, **kwargs):
            if not calls:
                calls.append("raced")
                with pytest.raises(MlflowException) as taken:
                    client.create_registered_model(name, **kwargs)  # the holder has it
                assert taken.value.error_code == "RESOURCE_ALREADY_EXISTS"
                holder.__exit__(None, None, None)  # ... and lets go before the read-back
                with pytest.raises(MlflowException) as gone:
                    client.get_registered_model(name)  # what MLflow's read-back then meets
                raise gone.value
            calls.append("took")
            return client.create_registered_model(name, **kwargs)

    with store_lock(LetGoInBetween(), lock, wait=5):
        assert [m.name for m in client.search_registered_models()] == [lock]
    assert calls == ["raced", "took"]
    assert client.search_registered_models() == []


class _Pickled(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return model_input


def test_the_loader_of_a_model_from_code_is_mlflows_own(logged, tmp_path):
    """check_mlcore_model relies on MLflow writing one loader_module for every model from
    code, read from a reference model it saves: mlcore's logged models carry that one, and a
    pickled Python object's model another, which is refused."""
    from mlflow.models import Model

    from tasks.registry import UntrustedModelError, check_mlcore_model, code_model_loader

    local = mlflow.artifacts.download_artifacts(logged["uri"], dst_path=str(tmp_path / "ours"))
    ours = Model.load(local).flavors["python_function"]
    assert ours["loader_module"] == code_model_loader()
    assert check_mlcore_model(local, logged["uri"]) == "linear"

    pickled = tmp_path / "pickled"
    mlflow.pyfunc.save_model(
        str(pickled),
        python_model=_Pickled(),
        pip_requirements=[],
        metadata={"mlcore_kind": "linear"},
    )
    conf = Model.load(str(pickled)).flavors["python_function"]
    assert conf["loader_module"] != code_model_loader() and conf.get("python_model")
    with pytest.raises(UntrustedModelError, match="not a python_function model from a code file"):
        check_mlcore_model(pickled, "pickled")
