"""Feature standardization with statistics taken from the training rows only."""

from __future__ import annotations

import numpy as np

from mlcore._validation import check_array, check_is_fitted, check_n_features


class Standardizer:
    """Scale each feature to zero mean and unit (population) variance.

    ``fit`` records ``mean_`` and ``scale_`` (the population std, ``ddof=0``) of the rows it
    is given -- the training rows only; ``transform`` applies them to any split. A feature
    with zero variance gets ``scale_ = 1``: it is centred but not divided by zero.
    """

    def fit(self, X, y=None) -> Standardizer:
        X = check_array(X, "X")
        if X.shape[0] == 0:
            raise ValueError("X has no rows to fit on")
        self.mean_ = X.mean(axis=0)
        self.var_ = X.var(axis=0)
        std = np.sqrt(self.var_)
        self.scale_ = np.where(std > 0, std, 1.0).astype(X.dtype)
        self.n_features_in_ = X.shape[1]
        return self

    @classmethod
    def from_stats(cls, mean: np.ndarray, scale: np.ndarray) -> Standardizer:
        """Rebuild a fitted standardizer from saved ``mean_`` and ``scale_`` arrays."""
        mean, scale = check_array(mean, "mean", ndim=(1,)), check_array(scale, "scale", ndim=(1,))
        if mean.shape != scale.shape or (scale <= 0).any():
            raise ValueError(f"mean {mean.shape} and scale {scale.shape} must match, scale > 0")
        std = cls()
        std.mean_, std.scale_, std.var_, std.n_features_in_ = mean, scale, scale**2, mean.size
        return std

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "mean_")
        X = check_array(X, "X")
        check_n_features(self, X)
        return (X - self.mean_) / self.scale_

    def fit_transform(self, X, y=None) -> np.ndarray:
        return self.fit(X).transform(X)

    def inverse_transform(self, X) -> np.ndarray:
        check_is_fitted(self, "mean_")
        X = check_array(X, "X")
        check_n_features(self, X)
        return X * self.scale_ + self.mean_


def feature_stats(before: dict, after: dict, splits=("train", "val", "test")) -> dict:
    """The course's printout as columns: per-feature mean and variance of each split's
    ``X_<split>`` in ``before`` (raw) and ``after`` (standardized)."""
    n = before[f"X_{splits[0]}"].shape[1]
    table = {"feature": [f"x{j + 1}" for j in range(n)]}
    for stage, data in (("raw", before), ("std", after)):
        for split in splits:
            X = data[f"X_{split}"]
            table[f"{split}_mean_{stage}"] = X.mean(axis=0)
            table[f"{split}_var_{stage}"] = X.var(axis=0)
    return table
