"""Input checks shared by the estimators: one clear ValueError at the boundary."""

from __future__ import annotations

import math
import os

import numpy as np


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before ``fit`` (same bases as scikit-learn's)."""


def check_array(a, name: str = "X", ndim: tuple[int, ...] = (2,)) -> np.ndarray:
    """Return ``a`` as a float array (float32 kept, everything else float64), checking its
    number of dimensions and that it holds only finite values."""
    arr = np.asarray(a)
    if arr.dtype != np.float32:
        try:
            arr = arr.astype(np.float64, copy=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}") from exc
    if arr.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{name} must be {want}, got shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def check_X_y(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = check_array(X, "X")
    y = check_array(y, "y", ndim=(1, 2))
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    if X.shape[0] == 0:
        raise ValueError("X has no rows")
    return X, y


def check_is_fitted(est, attr: str) -> None:
    if not hasattr(est, attr):
        raise NotFittedError(
            f"this {type(est).__name__} is not fitted yet: call fit(X, y) before using it"
        )


def check_n_features(est, X: np.ndarray) -> None:
    if X.shape[1] != est.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(est).__name__} was fitted with "
            f"{est.n_features_in_}"
        )


def env_seconds(name: str, default: float, zero: bool = False, error=ValueError) -> float:
    """A number of seconds from the environment variable ``name`` (``default`` when it is unset
    or blank): finite and positive, or with ``zero`` 0 or more; anything else raises ``error``
    naming the variable and its value."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
        kind = "number of seconds >= 0" if zero else "positive number of seconds"
        raise error(f"{name}={text!r} is not a {kind}")
    return value
