"""Regression and classification metrics (the same definitions as scikit-learn's)."""

from __future__ import annotations

import numpy as np


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if y_pred.ndim == 1:
        y_pred = y_pred[:, None]
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    if y_true.shape[0] == 0:
        raise ValueError("empty y_true")
    return y_true, y_pred


def mean_absolute_error(y_true, y_pred) -> float:
    """Mean of |y_true - y_pred| over every sample and output."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(np.abs(y_true - y_pred)))


def mean_squared_error(y_true, y_pred) -> float:
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean((y_true - y_pred) ** 2))


def r2_score(y_true, y_pred) -> float:
    """Coefficient of determination, averaged uniformly over outputs (scikit-learn's default)."""
    y_true, y_pred = _pair(y_true, y_pred)
    ss_res = ((y_true - y_pred) ** 2).sum(axis=0)
    ss_tot = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    # a constant target: perfect prediction scores 1, anything else 0 (scikit-learn's convention)
    safe = np.where(ss_tot > 0, ss_tot, 1.0)
    per_output = np.where(ss_tot > 0, 1.0 - ss_res / safe, np.where(ss_res == 0, 1.0, 0.0))
    return float(per_output.mean())


def accuracy(y_true, y_pred) -> float:
    """Fraction of labels predicted exactly."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("empty y_true")
    return float(np.mean(y_true == y_pred))
