"""Linear regression three ways: closed form (OLS), ridge (the course's formula), and SGD.

All follow scikit-learn's estimator conventions: hyper-parameters only in ``__init__``,
``fit`` returns ``self``, learned attributes end in ``_``. A 1-D ``y`` gives a 1-D
``coef_`` and a scalar ``intercept_``; a 2-D ``y`` of shape (m, h) gives ``coef_`` of shape
(h, n) and ``intercept_`` of shape (h,), and ``predict`` returns the same number of
dimensions as the ``y`` it was fitted on.
"""

from __future__ import annotations

import numpy as np

from mlcore._validation import check_array, check_is_fitted, check_n_features, check_X_y
from mlcore.metrics import r2_score


def add_ones_column(X: np.ndarray) -> np.ndarray:
    """Prepend the column of ones that carries the bias: (m, n) -> (m, n + 1)."""
    return np.hstack([np.ones((X.shape[0], 1), dtype=X.dtype), X])


class _LinearModel:
    """predict / score / parameter layout shared by the three estimators."""

    def _set_weights(self, W: np.ndarray, y_ndim: int) -> None:
        """W is (n + 1, h): row 0 is the bias, as in the ones-column formulation."""
        self.weights_ = W
        if y_ndim == 1:
            self.intercept_ = float(W[0, 0])
            self.coef_ = W[1:, 0].copy()
        else:
            self.intercept_ = W[0].copy()
            self.coef_ = W[1:].T.copy()
        self._y_ndim = y_ndim

    @classmethod
    def from_weights(cls, weights: np.ndarray, y_ndim: int = 2, **params) -> _LinearModel:
        """Rebuild a fitted model from its (n + 1, h) weight matrix (row 0: the bias),
        e.g. as saved in an ``.npz``."""
        W = check_array(weights, "weights")
        model = cls(**params)
        model.n_features_in_ = W.shape[0] - 1
        model._set_weights(W, y_ndim)
        return model

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "weights_")
        X = check_array(X, "X")
        check_n_features(self, X)
        out = X @ self.weights_[1:] + self.weights_[0]
        return out[:, 0] if self._y_ndim == 1 else out

    def score(self, X, y) -> float:
        """R² of the prediction (uniform average over outputs)."""
        return r2_score(y, self.predict(X))

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._param_names}

    def set_params(self, **params) -> _LinearModel:
        for key, value in params.items():
            if key not in self._param_names:
                raise ValueError(f"{type(self).__name__} has no parameter {key!r}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._param_names)
        return f"{type(self).__name__}({args})"


def _as_2d(y: np.ndarray) -> np.ndarray:
    return y[:, None] if y.ndim == 1 else y


class LinearRegression(_LinearModel):
    """Ordinary least squares in closed form, W* = (XᵀX)⁺Xᵀy with a ones column for the bias.

    Solved with ``lstsq`` (an SVD), so a rank-deficient X gives the minimum-norm solution
    instead of blowing up the way a plain inverse would.
    """

    _param_names = ()

    def fit(self, X, y) -> LinearRegression:
        X, y = check_X_y(X, y)
        self.n_features_in_ = X.shape[1]
        # Centre first so the bias is not part of the minimum-norm trade-off (scikit-learn's
        # solution on rank-deficient X); identical to lstsq on [1, X] when X has full rank.
        x_mean, Y = X.mean(axis=0), _as_2d(y)
        y_mean = Y.mean(axis=0)
        coef, *_ = np.linalg.lstsq(X - x_mean, Y - y_mean, rcond=None)
        self.rank_ = int(np.linalg.matrix_rank(X - x_mean)) if X.shape[0] > 1 else 0
        self._set_weights(np.vstack([y_mean - x_mean @ coef, coef]), y.ndim)
        return self


class RidgeRegression(_LinearModel):
    """Ridge regression, W* = (XᵀX + αI)⁻¹Xᵀy, with X carrying a column of ones.

    With ``penalize_bias=True`` (the course's formula) the bias is penalised like every
    weight. With ``penalize_bias=False`` the bias is left free, which is scikit-learn's
    ``Ridge``. The system is solved with ``np.linalg.solve``, never an explicit inverse.
    """

    _param_names = ("alpha", "penalize_bias")

    def __init__(self, alpha: float = 1.0, penalize_bias: bool = True):
        self.alpha = alpha
        self.penalize_bias = penalize_bias

    def fit(self, X, y) -> RidgeRegression:
        if not np.isscalar(self.alpha) or not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        X, y = check_X_y(X, y)
        self.n_features_in_ = X.shape[1]
        Y = _as_2d(y)
        if self.penalize_bias:
            Xb = add_ones_column(X)
            A = Xb.T @ Xb + self.alpha * np.eye(Xb.shape[1])
            W = _solve(A, Xb.T @ Y)
        else:
            x_mean, y_mean = X.mean(axis=0), Y.mean(axis=0)
            Xc = X - x_mean
            coef = _solve(Xc.T @ Xc + self.alpha * np.eye(X.shape[1]), Xc.T @ (Y - y_mean))
            W = np.vstack([y_mean - x_mean @ coef, coef])
        self._set_weights(W, y.ndim)
        return self


def _solve(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve A W = B; fall back to least squares when A is singular (alpha = 0, rank-deficient)."""
    try:
        return np.linalg.solve(A, B)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(A, B, rcond=None)[0]


class SGDRegressor(_LinearModel):
    """Linear regression by mini-batch stochastic gradient descent on the half-MSE loss
    L(W) = 1/(2m) ||X W + b - y||².

    Weights start at zero. ``loss_history_`` holds the half-MSE on the whole training set
    after each epoch; ``val_loss_history_`` the same on the validation set when ``fit`` is
    given ``X_val`` and ``y_val``.
    """

    _param_names = ("lr", "epochs", "batch_size", "shuffle", "random_state")

    def __init__(
        self,
        lr: float = 0.01,
        epochs: int = 100,
        batch_size: int = 32,
        shuffle: bool = True,
        random_state: int | None = None,
    ):
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.random_state = random_state

    def _check_params(self) -> None:
        if not (np.isscalar(self.lr) and np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a number > 0, got {self.lr!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def fit(self, X, y, X_val=None, y_val=None) -> SGDRegressor:
        self._check_params()
        X, y = check_X_y(X, y)
        Y = _as_2d(y)
        n = X.shape[1]
        self.n_features_in_ = n
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        if X_val is not None:
            X_val, y_val = check_X_y(X_val, y_val)
            if X_val.shape[1] != n:
                raise ValueError(f"X_val has {X_val.shape[1]} features but X has {n}")
            Y_val = _as_2d(y_val)
        rng = np.random.default_rng(self.random_state)
        w = np.zeros((n, Y.shape[1]), dtype=X.dtype)
        b = np.zeros(Y.shape[1], dtype=X.dtype)
        self.loss_history_, self.val_loss_history_ = [], []
        for epoch in range(self.epochs):
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below
                loss = self._epoch(X, Y, w, b, rng)
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"SGD diverged at epoch {epoch + 1} (loss is {loss}): lower lr={self.lr}"
                )
            self.loss_history_.append(loss)
            if X_val is not None:
                self.val_loss_history_.append(0.5 * float(np.mean((X_val @ w + b - Y_val) ** 2)))
        self.n_iter_ = self.epochs
        self._set_weights(np.vstack([b, w]), y.ndim)
        return self

    def _epoch(self, X, Y, w, b, rng) -> float:
        """One pass over shuffled mini-batches, updating w and b in place; returns the
        half-MSE on the whole training set afterwards."""
        m = X.shape[0]
        order = rng.permutation(m) if self.shuffle else np.arange(m)
        for start in range(0, m, self.batch_size):
            idx = order[start : start + self.batch_size]
            err = X[idx] @ w + b - Y[idx]  # dL/dprediction of the half-MSE, times batch size
            w -= self.lr * (X[idx].T @ err) / len(idx)
            b -= self.lr * err.mean(axis=0)
        return 0.5 * float(np.mean((X @ w + b - Y) ** 2))
