"""mlcore.linear against scikit-learn and the course's closed forms."""

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression as SkLinearRegression
from sklearn.linear_model import Ridge as SkRidge

from mlcore._validation import NotFittedError
from mlcore.linear import LinearRegression, RidgeRegression, SGDRegressor, add_ones_column
from mlcore.metrics import mean_squared_error
from mlcore.preprocessing import Standardizer


def random_problem(m=60, n=5, h=None, seed=0, rank_deficient=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n))
    if rank_deficient:  # two exactly collinear columns and a duplicated one
        X[:, 1] = 2.0 * X[:, 0] - 0.5 * X[:, 2]
        X[:, 3] = X[:, 2]
    w = rng.normal(size=(n,) if h is None else (n, h))
    y = X @ w + 3.0 + 0.1 * rng.normal(size=(m,) if h is None else (m, h))
    return X, y


CASES = [
    dict(),
    dict(rank_deficient=True),
    dict(h=3),
    dict(h=3, rank_deficient=True),
    dict(m=8, n=12),  # more features than rows
]


@pytest.mark.parametrize("case", CASES)
def test_ols_equals_sklearn(case):
    X, y = random_problem(**case)
    ours, ref = LinearRegression().fit(X, y), SkLinearRegression().fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=0, atol=1e-8)
    assert ours.predict(X).shape == ref.predict(X).shape


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("alpha", [1e-4, 0.5, 10.0])
def test_ridge_without_bias_penalty_equals_sklearn(case, alpha):
    X, y = random_problem(**case)
    ours = RidgeRegression(alpha=alpha, penalize_bias=False).fit(X, y)
    ref = SkRidge(alpha=alpha, solver="cholesky").fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=0, atol=1e-8)


@pytest.mark.parametrize("h", [None, 2])
def test_penalised_ridge_is_the_course_formula(h):
    X, y = random_problem(h=h, seed=3)
    alpha = 0.7
    Xb = add_ones_column(X)
    Y = y.reshape(len(y), -1)
    W = np.linalg.inv(Xb.T @ Xb + alpha * np.eye(Xb.shape[1])) @ Xb.T @ Y  # the course, literally
    model = RidgeRegression(alpha=alpha).fit(X, y)
    np.testing.assert_allclose(model.weights_, W, rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        model.predict(X), (Xb @ W).reshape(model.predict(X).shape), atol=1e-10
    )
    # the bias really is penalised: it differs from the unpenalised fit
    free = RidgeRegression(alpha=alpha, penalize_bias=False).fit(X, y)
    assert np.all(np.abs(np.atleast_1d(model.intercept_ - free.intercept_)) > 1e-4)


def test_ridge_alpha_zero_is_ols_and_rank_deficient_is_finite():
    X, y = random_problem(rank_deficient=True)
    model = RidgeRegression(alpha=0.0).fit(X, y)
    assert np.all(np.isfinite(model.coef_))
    np.testing.assert_allclose(model.predict(X), LinearRegression().fit(X, y).predict(X), atol=1e-8)


def test_estimator_conventions():
    X, y = random_problem()
    for est in (LinearRegression(), RidgeRegression(alpha=2.0), SGDRegressor(epochs=2)):
        with pytest.raises(NotFittedError, match="not fitted"):
            est.predict(X)
        assert est.fit(X, y) is est
        assert est.coef_.shape == (5,) and np.isscalar(est.intercept_)
        with pytest.raises(ValueError, match="X has 4 features, but .* was fitted with 5"):
            est.predict(X[:, :4])
    assert RidgeRegression(alpha=3.0).get_params() == {"alpha": 3.0, "penalize_bias": True}
    assert repr(SGDRegressor(lr=0.5)).startswith("SGDRegressor(lr=0.5")


def test_score_is_r2():
    from sklearn.metrics import r2_score

    X, y = random_problem(seed=5)
    model = LinearRegression().fit(X[:40], y[:40])
    assert model.score(X[40:], y[40:]) == pytest.approx(
        r2_score(y[40:], model.predict(X[40:])), abs=1e-12
    )


@pytest.mark.parametrize(
    "make, fit_args, match",
    [
        (lambda: RidgeRegression(alpha=-1), None, "alpha must be a finite number >= 0"),
        (lambda: SGDRegressor(lr=0), None, "lr must be a number > 0"),
        (lambda: SGDRegressor(epochs=0), None, "epochs must be an integer >= 1"),
        (lambda: SGDRegressor(batch_size=2.5), None, "batch_size must be an integer >= 1"),
        (LinearRegression, (np.ones((3, 2)), np.ones(4)), "X has 3 rows but y has 4"),
        (LinearRegression, (np.array([[1.0, np.nan]]), np.ones(1)), "X contains NaN or infinity"),
        (LinearRegression, (np.ones(3), np.ones(3)), "X must be 2-D, got shape"),
        (LinearRegression, (np.ones((3, 2)), np.ones((3, 1, 1))), "y must be 1-D or 2-D"),
    ],
)
def test_bad_input_is_a_clear_error(make, fit_args, match):
    X, y = fit_args or random_problem()
    with pytest.raises(ValueError, match=match):
        make().fit(X, y)


def test_sgd_diverging_says_so():
    X, y = random_problem()
    with pytest.raises(FloatingPointError, match="SGD diverged at epoch .* lower lr"):
        SGDRegressor(lr=50.0, epochs=50).fit(X * 100, y)


def test_sgd_reaches_closed_form_on_housing(housing):
    scaler = Standardizer().fit(housing["X_train"])
    X, y = scaler.transform(housing["X_train"]), housing["y_train"]
    Xv = scaler.transform(housing["X_val"])
    closed = mean_squared_error(y, LinearRegression().fit(X, y).predict(X))
    sgd = SGDRegressor(lr=0.01, epochs=200, batch_size=32, random_state=1234)
    sgd.fit(X, y, Xv, housing["y_val"])
    assert mean_squared_error(y, sgd.predict(X)) <= 1.01 * closed
    assert len(sgd.loss_history_) == 200 and len(sgd.val_loss_history_) == 200
    # the history is the half-MSE on the whole training set after each epoch
    assert sgd.loss_history_[-1] == pytest.approx(
        0.5 * mean_squared_error(y, sgd.predict(X)), rel=1e-12
    )
    assert sgd.loss_history_[0] > sgd.loss_history_[-1]


def test_sgd_is_repeatable_and_seed_matters():
    X, y = random_problem()
    a = SGDRegressor(epochs=5, random_state=1).fit(X, y).coef_
    b = SGDRegressor(epochs=5, random_state=1).fit(X, y).coef_
    c = SGDRegressor(epochs=5, random_state=2).fit(X, y).coef_
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sgd_full_batch_no_shuffle_is_gradient_descent():
    X, y = random_problem(m=20, n=3)
    model = SGDRegressor(lr=0.1, epochs=3, batch_size=20, shuffle=False).fit(X, y)
    w, b = np.zeros(3), 0.0
    for _ in range(3):  # plain gradient descent on 1/(2m)||Xw + b - y||²
        err = X @ w + b - y
        w, b = w - 0.1 * X.T @ err / 20, b - 0.1 * err.mean()
    np.testing.assert_allclose(model.coef_, w, atol=1e-12)
    assert model.intercept_ == pytest.approx(b, abs=1e-12)


def test_from_weights_round_trip():
    X, y = random_problem(h=2)
    model = RidgeRegression(alpha=0.1).fit(X, y)
    again = RidgeRegression.from_weights(model.weights_, y_ndim=2)
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
