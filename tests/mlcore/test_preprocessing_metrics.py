"""Standardizer and metrics against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import StandardScaler

from mlcore import metrics
from mlcore._validation import NotFittedError
from mlcore.preprocessing import Standardizer


def test_standardizer_equals_sklearn():
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(50, 4))
    Z = rng.normal(size=(7, 4))
    ours, ref = Standardizer().fit(X), StandardScaler().fit(X)
    np.testing.assert_allclose(ours.mean_, ref.mean_, atol=1e-12)
    np.testing.assert_allclose(ours.scale_, ref.scale_, atol=1e-12)
    np.testing.assert_allclose(ours.transform(Z), ref.transform(Z), atol=1e-12)
    np.testing.assert_allclose(ours.inverse_transform(ours.transform(Z)), Z, atol=1e-12)
    np.testing.assert_allclose(ours.fit_transform(X), ref.transform(X), atol=1e-12)


def test_zero_variance_feature_is_centred_not_divided_by_zero():
    X = np.column_stack([np.arange(5.0), np.full(5, 7.0)])
    out = Standardizer().fit_transform(X)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:, 1], 0.0)
    assert out[:, 0].std() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "action, match",
    [
        (lambda s: s.transform(np.ones((2, 3))), "not fitted"),
        (
            lambda s: s.fit(np.ones((2, 3))).transform(np.ones((2, 4))),
            "X has 4 features, but Standardizer was fitted with 3",
        ),
        (lambda s: s.fit(np.array([[1.0, np.inf]])), "NaN or infinity"),
        (lambda s: s.fit(np.ones((2, 3))).transform(np.array([[np.nan, 1, 1]])), "NaN or infinity"),
        (lambda s: s.fit(np.ones(3)), "X must be 2-D"),
    ],
)
def test_standardizer_errors(action, match):
    with pytest.raises(ValueError, match=match):
        action(Standardizer())
    assert issubclass(NotFittedError, ValueError)


def test_housing_split_and_train_only_statistics(housing):
    from sklearn.datasets import load_svmlight_file
    from sklearn.model_selection import train_test_split

    from tests.conftest import shared_data_dir

    assert (len(housing["X_train"]), len(housing["X_val"]), len(housing["X_test"])) == (
        272,
        67,
        167,
    )
    assert housing["X_train"].shape[1] == 13 and housing["y_train"].shape == (272, 1)
    X, y = load_svmlight_file(str(shared_data_dir() / "housing_scale"))
    X_tr, X_te, y_tr, y_te = train_test_split(X.toarray(), y, test_size=0.33, random_state=42)
    np.testing.assert_array_equal(housing["X_val"], X_tr[:67])  # the FIRST 20% are validation
    np.testing.assert_array_equal(housing["X_train"], X_tr[67:])
    np.testing.assert_array_equal(housing["y_test"][:, 0], y_te)
    scaler = Standardizer().fit(housing["X_train"])
    np.testing.assert_allclose(scaler.mean_, housing["X_train"].mean(axis=0), atol=1e-12)
    assert not np.allclose(
        scaler.mean_, np.vstack([housing["X_train"], housing["X_val"]]).mean(axis=0)
    )
    train = scaler.transform(housing["X_train"])
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(train.var(axis=0), 1.0, atol=1e-12)


@pytest.mark.parametrize("shape", [(30,), (30, 1), (30, 3)])
def test_regression_metrics_equal_sklearn(shape):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=shape), rng.normal(size=shape)
    assert metrics.mean_absolute_error(a, b) == pytest.approx(
        skm.mean_absolute_error(a, b), abs=1e-12
    )
    assert metrics.mean_squared_error(a, b) == pytest.approx(
        skm.mean_squared_error(a, b), abs=1e-12
    )
    assert metrics.r2_score(a, b) == pytest.approx(skm.r2_score(a, b), abs=1e-12)


def test_mae_is_a_true_mean_and_accuracy():
    assert metrics.mean_absolute_error([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 3.0, 0.0]) == 1.25
    assert metrics.accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    with pytest.raises(ValueError, match="y_true has shape"):
        metrics.mean_absolute_error(np.ones(3), np.ones(4))
