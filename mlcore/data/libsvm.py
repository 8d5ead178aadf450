"""LIBSVM (svmlight) files, parsed with scikit-learn, and the course's housing split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlcore.data.registry import DataError, fetch


def load_libsvm(path: str | Path, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse a LIBSVM file into dense float64 ``X`` (m, n) and ``y`` (m, 1).

    Raises `DataError` naming the file (and, where the parser says, the line) when it is
    missing, empty or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        from sklearn.datasets import load_svmlight_file  # (2 s of imports: when read)
        X, y = load_svmlight_file(str(path), n_features=n_features, dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: not a valid LIBSVM/svmlight file: {exc}") from exc
    if X.shape[0] == 0:
        raise DataError(f"{path}: no data rows")
    return np.asarray(X.todense(), dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1, 1)


def split_like_course(
    X: np.ndarray,
    y: np.ndarray,
    test_size: float = 0.33,
    random_state: int = 42,
    val_split: float = 0.2,
) -> dict[str, np.ndarray]:
    """The course notebook's split: ``train_test_split``, then the FIRST ``int(val_split *
    len(X_train))`` training rows become the validation set."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    if not 0.0 <= val_split < 1.0:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}")
    from sklearn.model_selection import train_test_split
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=random_state
    )
    n_val = int(val_split * len(X_train))
    return {
        "X_train": X_train[n_val:],
        "y_train": y_train[n_val:],
        "X_val": X_train[:n_val],
        "y_val": y_train[:n_val],
        "X_test": X_test,
        "y_test": y_test,
    }


def get_housing_data(
    test_size: float = 0.33, random_state: int = 42, val_split: float = 0.2
) -> dict[str, np.ndarray]:
    """Fetch LIBSVM ``housing_scale`` and split it as the course does (272 / 67 / 167 rows)."""
    X, y = load_libsvm(fetch("housing_scale"))
    return split_like_course(X, y, test_size, random_state, val_split)
