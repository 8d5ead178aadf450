"""ThreeLayerConvNet: the course's sanity and gradient checks, shapes, dtypes, validation."""

import numpy as np
import pytest

from mlcore.nn import ThreeLayerConvNet
from mlcore.nn.gradient_check import eval_numerical_gradient, rel_error


def test_initialisation_shapes_dtype_and_seed():
    model = ThreeLayerConvNet(
        input_dim=(3, 16, 12), num_filters=4, filter_size=5, hidden_dim=6, num_classes=3, seed=1
    )
    shapes = {k: v.shape for k, v in model.params.items()}
    assert shapes == {
        "W1": (4, 3, 5, 5),
        "b1": (4,),
        "W2": (4 * 8 * 6, 6),
        "b2": (6,),
        "W3": (6, 3),
        "b3": (3,),
    }
    assert all(v.dtype == np.float32 for v in model.params.values())
    for i in (1, 2, 3):
        assert not model.params[f"b{i}"].any()
    assert 0.5e-3 < model.params["W2"].std() < 1.5e-3  # weight_scale 1e-3
    again = ThreeLayerConvNet(
        input_dim=(3, 16, 12), num_filters=4, filter_size=5, hidden_dim=6, num_classes=3, seed=1
    )
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], again.params[k])


def test_initial_loss_course_sanity():
    rng = np.random.default_rng(231)
    N = 50
    X = rng.standard_normal((N, 3, 32, 32))
    y = rng.integers(10, size=N)
    model = ThreeLayerConvNet(seed=0)
    loss, grads = model.loss(X, y)
    assert loss == pytest.approx(np.log(10), abs=0.01)
    assert set(grads) == set(model.params)
    assert all(grads[k].shape == model.params[k].shape for k in grads)
    assert all(g.dtype == np.float32 for g in grads.values())
    model.reg = 0.5
    loss_reg, _ = model.loss(X, y)
    weights = sum(float(np.sum(model.params[f"W{i}"].astype(np.float64) ** 2)) for i in (1, 2, 3))
    assert loss_reg > loss
    assert loss_reg - loss == pytest.approx(0.5 * 0.5 * weights, rel=1e-4)


def test_scores_without_labels():
    model = ThreeLayerConvNet(
        input_dim=(1, 8, 8), num_filters=2, filter_size=3, hidden_dim=5, seed=0
    )
    X = np.random.default_rng(0).standard_normal((7, 1, 8, 8))
    scores = model.loss(X)
    assert scores.shape == (7, 10) and scores.dtype == np.float32
    pred = model.predict(X, batch_size=3)
    np.testing.assert_array_equal(pred, np.argmax(scores, axis=1))
    assert model.predict(X[:0]).shape == (0,)


@pytest.mark.parametrize("reg", [0.0, 0.5])
def test_gradient_check_course_small_config(reg):
    # weight_scale 0.1 rather than the default 1e-3: with tiny weights the W1 gradients are
    # below the centred difference's rounding noise and the check would only measure noise
    num_inputs, input_dim = 2, (3, 16, 16)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((num_inputs, *input_dim))
    y = rng.integers(10, size=num_inputs)
    model = ThreeLayerConvNet(
        num_filters=3,
        filter_size=3,
        input_dim=input_dim,
        hidden_dim=7,
        weight_scale=0.1,
        reg=reg,
        dtype=np.float64,
        seed=2,
    )
    loss, grads = model.loss(X, y)
    for name in sorted(model.params):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name])
        assert rel_error(num, grads[name]) < 1e-5, name


def test_input_validation():
    model = ThreeLayerConvNet(input_dim=(1, 8, 8), num_filters=2, filter_size=3, hidden_dim=5)
    with pytest.raises(ValueError, match=r"X must have shape \(N, 1, 8, 8\).*got \(2, 3, 8, 8\)"):
        model.loss(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r"X must have shape \(N, 1, 8, 8\).*got \(8, 8\)"):
        model.predict(np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"y labels must be in \[0, 10\)"):
        model.loss(np.zeros((2, 1, 8, 8)), np.array([0, 10]))
    with pytest.raises(ValueError, match="leaves no 2x2 pooling window"):
        ThreeLayerConvNet(input_dim=(1, 1, 1), filter_size=1)


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


def tiny_net(**kw):
    return ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=6, **kw)


def test_without_seed_the_course_global_seed_fixes_the_weights(global_numpy_rng):
    course_seed(231)
    a = tiny_net()
    course_seed(231)
    b = tiny_net()
    course_seed(232)
    c = tiny_net()
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    for k in ("W1", "W2", "W3"):
        assert not np.array_equal(a.params[k], c.params[k])
    # the seed is one draw from the global generator, used as an explicit seed would be
    drawn = int(np.random.RandomState(231).randint(2**31))
    explicit = tiny_net(seed=drawn)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], explicit.params[k])


def test_explicit_seed_draws_as_before_and_leaves_the_global_generator(global_numpy_rng):
    course_seed(5)
    model = tiny_net(seed=7, weight_scale=0.05)
    # the global stream is where course_seed(5) left it
    assert next_global_draw() == np.random.RandomState(5).randint(2**31)
    rng = np.random.default_rng(7)  # what the model drew from before seed=None changed
    for i in (1, 2, 3):
        w = model.params[f"W{i}"]
        expected = (0.05 * rng.standard_normal(w.shape)).astype(np.float32)
        np.testing.assert_array_equal(w, expected)


def test_from_params_does_not_draw_from_the_global_generator(global_numpy_rng):
    params = tiny_net(seed=3).params
    course_seed(5)
    rebuilt = ThreeLayerConvNet.from_params(params, (3, 8, 8))
    assert next_global_draw() == np.random.RandomState(5).randint(2**31)
    for k in params:
        np.testing.assert_array_equal(rebuilt.params[k], params[k])
