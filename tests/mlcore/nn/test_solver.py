"""Solver: learning on real digits, determinism, checkpoint/resume, callbacks, validation."""

import os
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from mlcore.nn import Solver, ThreeLayerConvNet, TrainingDiverged
from mlcore.nn.optim import sgd
from mlcore.nn.solver import DEFAULT_DIVERGENCE_FACTOR


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = d.images[:, None].astype(np.float64)  # (1797, 1, 8, 8), pixel values 0..16
    X = (X - X[:1200].mean()) / X[:1200].std()  # statistics from the training rows only
    return X, d.target


def small_net(seed=0, **kw):
    args = dict(input_dim=(1, 8, 8), num_filters=16, filter_size=3, hidden_dim=64)
    args.update(kw)
    return ThreeLayerConvNet(weight_scale=0.1, seed=seed, **args)


def data_dict(X, y, n_train, n_val):
    return {
        "X_train": X[:n_train],
        "y_train": y[:n_train],
        "X_val": X[n_train : n_train + n_val],
        "y_val": y[n_train : n_train + n_val],
    }


def test_overfits_small_data(digits):
    X, y = digits
    model = small_net(num_filters=32, hidden_dim=100)
    solver = Solver(
        model,
        data_dict(X, y, 100, 300),
        num_epochs=15,
        batch_size=50,
        update_rule="adam",
        optim_config={"learning_rate": 1e-3},
        verbose=False,
        seed=0,
    )
    solver.train()
    # the course's overfitting cell: noisy, but far from tripping the divergence check
    assert max(solver.loss_history) / solver.loss_history[0] < 2 < DEFAULT_DIVERGENCE_FACTOR
    assert len(solver.loss_history) == 15 * 2
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 16
    assert solver.train_acc_history[-1] >= 0.9
    assert solver.val_acc_history[-1] < solver.train_acc_history[-1]  # it overfits
    assert solver.loss_history[-1] < 0.5 * solver.loss_history[0]


def test_learns_digits(digits):
    X, y = digits
    model = small_net()
    solver = Solver(
        model,
        data_dict(X, y, 1200, 300),
        num_epochs=8,
        batch_size=50,
        update_rule="adam",
        optim_config={"learning_rate": 1e-3},
        verbose=False,
        seed=0,
    )
    solver.train()
    assert max(solver.loss_history) / solver.loss_history[0] < 2
    assert solver.best_val_acc >= 0.9
    # the best parameters are back in the model: the full validation accuracy is the best one
    assert solver.check_accuracy(solver.X_val, solver.y_val) == solver.best_val_acc
    for name, w in solver.best_params.items():
        np.testing.assert_array_equal(model.params[name], w)
    assert np.mean(model.predict(X[1500:]) == y[1500:]) >= 0.85  # held-out rows


def run(digits, seed, **kw):
    X, y = digits
    args = dict(
        num_epochs=2,
        batch_size=50,
        update_rule="adam",
        optim_config={"learning_rate": 2e-3},
        lr_decay=0.9,
        num_train_samples=100,
        num_val_samples=50,
        verbose=False,
        seed=seed,
    )
    args.update(kw)
    solver = Solver(small_net(seed=1), data_dict(X, y, 300, 100), **args)
    solver.train()
    return solver


def test_same_seed_same_run(digits):
    a, b, c = run(digits, 5), run(digits, 5), run(digits, 6)
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    assert a.train_acc_history == b.train_acc_history and a.val_acc_history == b.val_acc_history
    for name in a.model.params:
        np.testing.assert_array_equal(a.model.params[name], b.model.params[name])
    assert not np.array_equal(a.loss_history, c.loss_history)


def test_checkpoint_resume_equals_straight_run(digits, tmp_path):
    straight = run(digits, 3)
    name = str(tmp_path / "run")
    first = run(digits, 3, num_epochs=1, checkpoint_name=name)
    assert sorted(os.listdir(tmp_path)) == ["run_epoch_1.npz"]  # no temporary files left
    with np.load(f"{name}_epoch_1.npz", allow_pickle=False) as f:
        assert int(f["epoch"]) == 1 and int(f["iteration"]) == 6
        assert int(f["optim/W1/t"]) == 6
        assert f["optim/W1/m"].shape == first.model.params["W1"].shape
        assert float(f["optim/b3/learning_rate"]) == pytest.approx(2e-3 * 0.9)
        assert f["param/W2"].dtype == np.float32

    resumed = run(digits, 3, resume_from=f"{name}_epoch_1.npz", checkpoint_name=name)
    assert sorted(os.listdir(tmp_path)) == ["run_epoch_1.npz", "run_epoch_2.npz"]
    np.testing.assert_array_equal(resumed.loss_history, straight.loss_history)
    assert resumed.train_acc_history == straight.train_acc_history
    assert resumed.val_acc_history == straight.val_acc_history
    assert resumed.best_val_acc == straight.best_val_acc
    assert resumed.epoch == straight.epoch == 2
    for p in straight.model.params:
        np.testing.assert_array_equal(resumed.model.params[p], straight.model.params[p])
        for key, value in straight.optim_configs[p].items():
            np.testing.assert_array_equal(resumed.optim_configs[p][key], value)
    assert resumed.optim_configs["W1"]["learning_rate"] == pytest.approx(2e-3 * 0.9**2)


def test_checkpoint_must_match_model(digits, tmp_path):
    X, y = digits
    name = str(tmp_path / "ck")
    run(digits, 0, num_epochs=1, checkpoint_name=name)
    with pytest.raises(ValueError, match=r"does not match the model.*W2"):
        Solver(
            small_net(hidden_dim=32),
            data_dict(X, y, 300, 100),
            resume_from=f"{name}_epoch_1.npz",
            verbose=False,
        )


def test_callback_calls(digits):
    events = []
    solver = run(digits, 0, num_epochs=3, callback=lambda kind, info: events.append((kind, info)))
    iterations = [info for kind, info in events if kind == "iteration"]
    epochs = [info for kind, info in events if kind == "epoch"]
    assert len(iterations) == 3 * 6
    assert all(set(i) == {"iteration", "epoch", "loss"} for i in iterations)
    assert [i["iteration"] for i in iterations] == list(range(1, 19))
    assert [i["epoch"] for i in iterations] == [0] * 6 + [1] * 6 + [2] * 6
    assert [i["loss"] for i in iterations] == solver.loss_history
    # once after the first iteration, then at each epoch end
    assert len(epochs) == 4
    keys = {"epoch", "iteration", "train_acc", "val_acc", "lr", "checkpoint"}
    assert all(set(e) == keys for e in epochs)
    assert not any(e["checkpoint"] for e in epochs)  # no checkpoint_name
    assert [(e["epoch"], e["iteration"]) for e in epochs] == [(0, 1), (1, 6), (2, 12), (3, 18)]
    assert [e["val_acc"] for e in epochs] == solver.val_acc_history
    assert [e["train_acc"] for e in epochs] == solver.train_acc_history
    assert epochs[-1]["lr"] == pytest.approx(2e-3 * 0.9**3)


def test_callable_update_rule_and_sgd_default(digits):
    calls = []

    def rule(w, dw, config):
        calls.append(1)
        return sgd(w, dw, config)

    solver = run(digits, 0, num_epochs=1, update_rule=rule, optim_config={})
    assert len(calls) == 6 * len(solver.model.params)
    assert solver.optim_configs["W1"]["learning_rate"] == pytest.approx(1e-2 * 0.9)


def test_check_accuracy_subsampling_is_seeded(digits):
    X, y = digits
    accs = []
    for _ in range(2):
        s = Solver(small_net(), data_dict(X, y, 300, 100), seed=9, verbose=False)
        accs.append([s.check_accuracy(X[:500], y[:500], num_samples=37) for _ in range(3)])
    assert accs[0] == accs[1]
    full = Solver(small_net(), data_dict(X, y, 300, 100), verbose=False)
    expected = np.mean(small_net().predict(X[:250]) == y[:250])
    assert full.check_accuracy(X[:250], y[:250], batch_size=30) == expected


def test_validation(digits):
    X, y = digits
    data = data_dict(X, y, 100, 50)
    with pytest.raises(ValueError, match="invalid update_rule 'adagrad'"):
        Solver(small_net(), data, update_rule="adagrad")
    with pytest.raises(ValueError, match=r"data is missing \['y_val'\]"):
        Solver(small_net(), {k: v for k, v in data.items() if k != "y_val"})
    with pytest.raises(ValueError, match="X_train has 100 rows but y_train has 99"):
        Solver(small_net(), dict(data, y_train=y[:99]))
    with pytest.raises(ValueError, match="X_val has 50 rows but y_val has 3"):
        Solver(small_net(), dict(data, y_val=y[:3]))
    with pytest.raises(ValueError, match="unrecognized arguments: learning_rate"):
        Solver(small_net(), data, learning_rate=1e-3)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Solver(small_net(), data, batch_size=0)


def test_a_non_finite_loss_stops_training_where_it_happens(digits):
    events = []
    with pytest.raises(TrainingDiverged) as caught:
        run(digits, 0, update_rule="sgd", optim_config={"learning_rate": 1e30}, lr_decay=1.0,
            callback=lambda kind, info: events.append((kind, info)))  # fmt: skip
    err = caught.value
    assert not np.isfinite(err.loss)
    assert isinstance(err, FloatingPointError)  # as SGDRegressor's divergence
    iterations = [info["iteration"] for kind, info in events if kind == "iteration"]
    # stopped at the first non-finite loss; that step is neither recorded nor applied
    assert err.iteration == iterations[-1] + 1 and err.epoch == 1
    assert str(err) == (
        f"training diverged at iteration {err.iteration} (epoch 1 of 2): loss {err.loss} is "
        "not finite; lower the learning rate (1e+30)"
    )


def test_a_finite_blow_up_stops_training(digits):
    X, y = digits
    solver = Solver(
        small_net(seed=1), data_dict(X, y, 300, 100), num_epochs=3, batch_size=50,
        update_rule="adam", optim_config={"learning_rate": 1e4}, verbose=False, seed=0,
    )  # fmt: skip
    with pytest.raises(TrainingDiverged, match="times the first loss") as caught:
        solver.train()
    err = caught.value
    first = solver.loss_history[0]
    assert np.isfinite(err.loss) and err.loss > DEFAULT_DIVERGENCE_FACTOR * first
    # every loss before it was within the bound
    assert max(solver.loss_history) <= DEFAULT_DIVERGENCE_FACTOR * first
    assert err.iteration == len(solver.loss_history) + 1 == solver.iteration + 1
    assert f"more than divergence_factor=1000 times the first loss {first:.4g}" in str(err)
    # the same run with a laxer factor goes further before it stops
    lax = Solver(
        small_net(seed=1), data_dict(X, y, 300, 100), num_epochs=3, batch_size=50,
        update_rule="adam", optim_config={"learning_rate": 1e4}, verbose=False, seed=0,
        divergence_factor=None,
    )  # fmt: skip
    try:
        lax.train()
    except TrainingDiverged as exc:
        assert exc.iteration > err.iteration and not np.isfinite(exc.loss)
    else:
        assert len(lax.loss_history) > err.iteration


def test_divergence_factor_must_exceed_one(digits):
    X, y = digits
    for bad in (1, 0.5, -3):
        with pytest.raises(ValueError, match=f"divergence_factor must be > 1 or None, got {bad}"):
            Solver(small_net(), data_dict(X, y, 100, 50), divergence_factor=bad)


def test_checkpoint_events_follow_each_written_checkpoint(digits, tmp_path):
    seen = []

    def callback(kind, info):
        if kind == "checkpoint":
            with np.load(info["path"], allow_pickle=False) as f:  # complete when announced
                seen.append((info["epoch"], info["iteration"], int(f["epoch"])))

    run(digits, 0, num_epochs=3, checkpoint_name=str(tmp_path / "c"), callback=callback)
    assert seen == [(1, 6, 1), (2, 12, 2), (3, 18, 3)]


def test_checkpoint_seconds_spaces_the_checkpoints_and_the_last_epoch_always_gets_one(
    digits, tmp_path
):
    """Epoch events say whether a checkpoint follows; checkpoints come once the interval has
    passed since the last one, and at the last epoch; the training is the same bits as with a
    checkpoint every epoch. Each epoch event sleeps 0.3 s (the epochs' own work is a few ms),
    with a 0.5 s interval: epochs 3 and 6 are due, and 7, the last."""
    flags, written = [], []

    def callback(kind, info):
        if kind == "epoch" and info["epoch"] >= 1:
            flags.append((info["epoch"], info["checkpoint"]))
            time.sleep(0.3)
        elif kind == "checkpoint":
            written.append(info["epoch"])

    name = str(tmp_path / "spaced")
    spaced = run(digits, 4, num_epochs=7, checkpoint_name=name, checkpoint_seconds=0.5,
                 callback=callback)  # fmt: skip
    assert written == [3, 6, 7]
    assert flags == [(e, e in (3, 6, 7)) for e in range(1, 8)]
    assert sorted(p.name for p in tmp_path.glob("spaced*")) == [
        f"spaced_epoch_{e}.npz" for e in (3, 6, 7)
    ]
    (tmp_path / "every").mkdir()
    every = run(digits, 4, num_epochs=7, checkpoint_name=str(tmp_path / "every" / "c"))
    assert spaced.loss_history == every.loss_history
    assert spaced.val_acc_history == every.val_acc_history
    for name_, w in every.model.params.items():
        np.testing.assert_array_equal(spaced.model.params[name_], w)


def test_checkpoint_seconds_must_not_be_negative(digits):
    X, y = digits
    with pytest.raises(ValueError, match="checkpoint_seconds must be >= 0, got -1"):
        Solver(small_net(), data_dict(X, y, 100, 50), checkpoint_seconds=-1)


# numpy's legacy global generator (NPY002) is what the course seeds, so these tests use it


@pytest.fixture
def global_numpy_rng():
    """The tests below seed numpy's global generator as the course does; put it back after."""
    state = np.random.get_state()  # noqa: NPY002
    yield
    np.random.set_state(state)  # noqa: NPY002


def course_seed(seed):
    np.random.seed(seed)  # noqa: NPY002


def next_global_draw():
    """What the global generator gives next (what a model built now would draw)."""
    return int(np.random.randint(2**31))  # noqa: NPY002


def tiny_data():
    """40 random 3x8x8 images of 10 classes: 30 to train on, 10 to validate on."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 3, 8, 8)), rng.integers(10, size=40)
    return data_dict(X, y, 30, 10)


def tiny_net(**kw):
    args = dict(input_dim=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=10)
    return ThreeLayerConvNet(weight_scale=0.1, **{**args, **kw})


def course_cell(global_seed, **kw):
    """The course's way: np.random.seed, then a model and a Solver given no seed."""
    course_seed(global_seed)
    model = tiny_net()
    initial = {k: v.copy() for k, v in model.params.items()}
    args = dict(
        num_epochs=2, batch_size=10, update_rule="adam", optim_config={"learning_rate": 1e-2},
        num_train_samples=20, verbose=False,
    )  # fmt: skip
    solver = Solver(model, tiny_data(), **{**args, **kw})
    solver.train()
    return initial, solver


def test_without_seed_the_course_global_seed_fixes_weights_and_training(global_numpy_rng):
    (init_a, a), (init_b, b), (init_c, c) = course_cell(231), course_cell(231), course_cell(232)
    for k in init_a:
        np.testing.assert_array_equal(init_a[k], init_b[k])
        np.testing.assert_array_equal(a.model.params[k], b.model.params[k])
    assert len(a.loss_history) == 2 * 3
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    assert a.train_acc_history == b.train_acc_history and a.val_acc_history == b.val_acc_history
    assert not np.array_equal(init_a["W1"], init_c["W1"])
    assert not np.array_equal(a.loss_history, c.loss_history)
    # the Solver's seed is the draw after the model's one
    state = np.random.RandomState(231)
    state.randint(2**31)  # the model's seed
    assert a.seed == b.seed == int(state.randint(2**31))


def test_without_seed_resume_continues_the_checkpointed_stream(global_numpy_rng, tmp_path):
    _, straight = course_cell(231)
    name = str(tmp_path / "course")
    course_cell(231, num_epochs=1, checkpoint_name=name)
    course_seed(999)  # the resumed Solver's own draw is overwritten by the checkpoint's rng
    _, resumed = course_cell(231, resume_from=f"{name}_epoch_1.npz")
    np.testing.assert_array_equal(resumed.loss_history, straight.loss_history)
    assert resumed.val_acc_history == straight.val_acc_history


def test_explicit_seed_samples_as_before_and_leaves_the_global_generator(global_numpy_rng):
    data = tiny_data()
    course_seed(5)
    solver = Solver(
        tiny_net(seed=3), data, seed=11, num_epochs=1, batch_size=10, update_rule="sgd",
        verbose=False,
    )  # fmt: skip
    assert next_global_draw() == np.random.RandomState(5).randint(2**31)
    solver.train()
    # the old code: minibatches from np.random.default_rng(seed) (30 training rows are fewer
    # than num_train_samples, so no accuracy subsample draws from it)
    rng, reference, expected = np.random.default_rng(11), tiny_net(seed=3), []
    for _ in range(3):
        batch = rng.choice(30, 10)
        loss, grads = reference.loss(data["X_train"][batch], data["y_train"][batch])
        expected.append(loss)
        for k, w in reference.params.items():
            reference.params[k] = sgd(w, grads[k], {"learning_rate": 1e-2})[0]
    assert solver.loss_history == expected
