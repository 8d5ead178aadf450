"""Image datasets as NCHW arrays: scikit-learn's 8x8 digits and CIFAR-10 (binary version).

CIFAR-10 is parsed from the official binary archive ``cifar-10-binary.tar.gz`` with numpy,
member by member, straight out of the tar stream: nothing is extracted to disk and nothing
is unpickled. Each ``.bin`` member is a run of 3,073-byte records: one label byte, then
1,024 red, 1,024 green and 1,024 blue bytes (each a 32x32 row-major plane), so a record's
pixels reshape directly to (3, 32, 32).
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np

from mlcore.data.registry import DataError, fetch

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
DIGITS_CLASSES = tuple(str(d) for d in range(10))

_CLASSES = {"digits": DIGITS_CLASSES, "cifar10": CIFAR10_CLASSES}

_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_TRAIN = tuple(f"{_CIFAR_DIR}/data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = (f"{_CIFAR_DIR}/test_batch.bin",)
_CIFAR_SHAPE = (3, 32, 32)
_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + pixels


_SHAPES = {"digits": (1, 8, 8), "cifar10": _CIFAR_SHAPE}


def image_shape(name: str) -> tuple[int, int, int]:
    """(channels, height, width) of one image of the dataset ``name``."""
    class_names(name)  # an unknown name is refused there
    return _SHAPES[name]


def class_names(name: str) -> tuple[str, ...]:
    """The class names of image dataset ``name`` ("digits" or "cifar10"), by label."""
    try:
        return _CLASSES[name]
    except KeyError:
        raise ValueError(
            f"unknown image dataset {name!r}; known: {', '.join(sorted(_CLASSES))}"
        ) from None


def _check_count(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype!r}") from exc
    if not np.issubdtype(dt, np.floating):
        raise ValueError(f"dtype must be a floating-point dtype, got {dt}")
    return dt


def _subtract_train_mean(X_train: np.ndarray, *others: np.ndarray) -> None:
    """Subtract the mean image of ``X_train`` from every array, in place."""
    # accumulate in float64: a float32 running sum over ~50k rows loses digits; the
    # float64 temporary is one image, not a copy of X_train
    mean = X_train.mean(axis=0, dtype=np.float64).astype(X_train.dtype)
    for X in (X_train, *others):
        X -= mean


def load_digits_data(
    num_validation: int = 300, num_test: int = 300, seed: int = 0, dtype=np.float32
) -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, offline), split and centred.

    The rows are shuffled with ``np.random.default_rng(seed).permutation(1797)``: the first
    ``1797 - num_validation - num_test`` become the training set, the next ``num_validation``
    the validation set, the last ``num_test`` the test set. Pixels are scaled from 0..16 to
    [0, 1], then the mean image of the training rows is subtracted from all splits.

    Returns ``X_train`` (N, 1, 8, 8) of ``dtype`` and ``y_train`` (N,) int64, likewise
    ``X_val``/``y_val`` and ``X_test``/``y_test``.
    """
    num_validation = _check_count("num_validation", num_validation)
    num_test = _check_count("num_test", num_test)
    dt = _check_float_dtype(dtype)
    from sklearn.datasets import load_digits  # (2 s of imports: when loaded)
    digits = load_digits()
    n = len(digits.target)
    if num_validation >= n:
        raise ValueError(f"num_validation={num_validation} leaves no training rows of {n}")
    if num_validation + num_test >= n:
        raise ValueError(
            f"num_validation={num_validation} + num_test={num_test} leaves no training rows of {n}"
        )
    num_training = n - num_validation - num_test
    order = np.random.default_rng(seed).permutation(n)
    parts = {
        "train": order[:num_training],
        "val": order[num_training : num_training + num_validation],
        "test": order[num_training + num_validation :],
    }
    images = digits.images.reshape(n, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    out = {}
    for split, idx in parts.items():
        out[f"X_{split}"] = (images[idx] / 16.0).astype(dt)
        out[f"y_{split}"] = labels[idx]
    _subtract_train_mean(out["X_train"], out["X_val"], out["X_test"])
    return out


def _cifar_member(path: Path, members: dict[str, tarfile.TarInfo], name: str) -> tarfile.TarInfo:
    member = members.get(name)
    if member is None or not member.isfile():
        raise DataError(f"{path}: member {name!r} is missing from the CIFAR-10 binary archive")
    if member.size == 0 or member.size % _CIFAR_RECORD:
        raise DataError(
            f"{path}: member {name!r} has {member.size} bytes, not a positive multiple of "
            f"the {_CIFAR_RECORD}-byte CIFAR-10 record"
        )
    return member


def _read_cifar_member(
    tar: tarfile.TarFile, path: Path, member: tarfile.TarInfo, X: np.ndarray, y: np.ndarray
) -> None:
    """Parse one ``.bin`` member into the preallocated ``X`` (n, 3, 32, 32) and ``y`` (n,)."""
    raw = tar.extractfile(member).read()  # this member's bytes: the only buffer held
    if len(raw) != member.size:
        raise DataError(f"{path}: member {member.name!r} is truncated in the archive")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(
            f"{path}: member {member.name!r} record {bad[0]} has label {labels[bad[0]]}, "
            "not a CIFAR-10 class 0..9"
        )
    y[:] = labels
    X[:] = records[:, 1:].reshape(-1, *_CIFAR_SHAPE)


def load_cifar10(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse the CIFAR-10 binary archive ``cifar-10-binary.tar.gz``.

    Returns ``X_train`` uint8 (N, 3, 32, 32), ``y_train`` int64 (N,), ``X_test`` uint8
    (M, 3, 32, 32), ``y_test`` int64 (M,): data_batch_1..5 in order, then test_batch
    (N = 50,000 and M = 10,000 for the official archive; the sizes come from the members).
    Raises `DataError` naming the archive (and the member) when it is unreadable, a member is
    missing or not a whole number of 3,073-byte records, or a label is above 9.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}  # headers only
            splits = []
            for names in (_CIFAR_TRAIN, _CIFAR_TEST):
                found = [_cifar_member(path, members, name) for name in names]
                n = sum(m.size // _CIFAR_RECORD for m in found)
                X = np.empty((n, *_CIFAR_SHAPE), dtype=np.uint8)
                y = np.empty(n, dtype=np.int64)
                splits.append((X, y, found))
            jobs = []
            for X, y, found in splits:
                start = 0
                for m in found:
                    stop = start + m.size // _CIFAR_RECORD
                    jobs.append((m, X[start:stop], y[start:stop]))
                    start = stop
            # in archive order: a gzip stream only reads forward, a backward seek re-inflates
            # it from the start
            for m, X_part, y_part in sorted(jobs, key=lambda job: job[0].offset_data):
                _read_cifar_member(tar, path, m, X_part, y_part)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 binary archive (.tar.gz): {exc}") from exc
    (X_train, y_train, _), (X_test, y_test, _) = splits
    return X_train, y_train, X_test, y_test


def get_cifar10_data(
    num_training: int = 49000,
    num_validation: int = 1000,
    num_test: int = 1000,
    subtract_mean: bool = True,
    dtype=np.float32,
    path: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """CIFAR-10 split as the course's ``get_CIFAR10_data``, in NCHW.

    Training = the first ``num_training`` training rows, validation = the next
    ``num_validation``, test = the first ``num_test`` test rows; with ``subtract_mean`` the
    mean image of the training rows is subtracted from all three. ``path=None`` fetches the
    registry's ``cifar10`` archive.

    Returns ``X_train`` (num_training, 3, 32, 32) of ``dtype``, ``y_train`` (num_training,)
    int64, likewise ``X_val``/``y_val`` and ``X_test``/``y_test``. Peak memory is the uint8
    arrays of the whole archive plus the returned float arrays (about 1.25 float32 copies
    when the splits cover the archive).
    """
    num_training = _check_count("num_training", num_training, minimum=1)
    num_validation = _check_count("num_validation", num_validation)
    num_test = _check_count("num_test", num_test)
    dt = _check_float_dtype(dtype)
    X_train_u8, y_train_all, X_test_u8, y_test_all = load_cifar10(
        fetch("cifar10") if path is None else path
    )
    n_train, n_test = len(X_train_u8), len(X_test_u8)
    if num_training + num_validation > n_train:
        raise ValueError(
            f"num_training={num_training} + num_validation={num_validation} exceeds the "
            f"{n_train} training images"
        )
    if num_test > n_test:
        raise ValueError(f"num_test={num_test} exceeds the {n_test} test images")
    val = slice(num_training, num_training + num_validation)
    # one split at a time, each uint8 array dropped once converted: never a second float copy
    data = {
        "X_train": X_train_u8[:num_training].astype(dt),
        "y_train": y_train_all[:num_training].copy(),
        "X_val": X_train_u8[val].astype(dt),
        "y_val": y_train_all[val].copy(),
    }
    del X_train_u8, y_train_all
    data["X_test"] = X_test_u8[:num_test].astype(dt)
    data["y_test"] = y_test_all[:num_test].copy()
    del X_test_u8, y_test_all
    if subtract_mean:
        _subtract_train_mean(data["X_train"], data["X_val"], data["X_test"])
    return data


def load_image_dataset(name: str, **kwargs) -> dict[str, np.ndarray]:
    """``load_digits_data(**kwargs)`` for "digits", ``get_cifar10_data(**kwargs)`` for
    "cifar10"."""
    loaders = {"digits": load_digits_data, "cifar10": get_cifar10_data}
    if name not in loaders:
        raise ValueError(f"unknown image dataset {name!r}; known: {', '.join(sorted(loaders))}")
    return loaders[name](**kwargs)
