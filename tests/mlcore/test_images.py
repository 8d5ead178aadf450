"""Image datasets: sklearn's digits, and CIFAR-10 from an archive written here in the official
binary format and served over loopback HTTP through the real fetch layer."""

import dataclasses
import gzip
import hashlib
import io
import re
import tarfile
import tracemalloc

import numpy as np
import pytest
from sklearn.datasets import load_digits

from mlcore.data import (
    CIFAR10_CLASSES,
    DIGITS_CLASSES,
    DataError,
    class_names,
    fetch,
    get_cifar10_data,
    load_cifar10,
    load_digits_data,
    load_image_dataset,
    registry,
)

CIFAR = registry.DATASETS["cifar10"]  # the real entry, before any test replaces it
BIN = "cifar-10-batches-bin"
RECORD = 3073
TRAIN_PER_BATCH, N_TEST = 400, 500
N_TRAIN = 5 * TRAIN_PER_BATCH
META = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def sk_digits():
    return load_digits()


def test_digits_shapes_dtypes_and_split_sizes():
    data = load_digits_data()
    assert data["X_train"].shape == (1197, 1, 8, 8)
    assert data["X_val"].shape == (300, 1, 8, 8) and data["X_test"].shape == (300, 1, 8, 8)
    assert [len(data[f"y_{s}"]) for s in ("train", "val", "test")] == [1197, 300, 300]
    assert sum(len(data[f"X_{s}"]) for s in ("train", "val", "test")) == 1797
    assert all(data[f"X_{s}"].dtype == np.float32 for s in ("train", "val", "test"))
    assert all(data[f"y_{s}"].dtype == np.int64 for s in ("train", "val", "test"))
    assert load_digits_data(dtype=np.float64)["X_val"].dtype == np.float64


def test_digits_rows_are_sklearns_for_the_seeded_permutation(sk_digits):
    data = load_digits_data(num_validation=200, num_test=100, seed=3)
    order = np.random.default_rng(3).permutation(1797)
    idx = {"train": order[:1497], "val": order[1497:1697], "test": order[1697:]}
    pixels = sk_digits.images / 16.0
    mean = pixels[idx["train"]].mean(axis=0)
    for split, rows in idx.items():
        np.testing.assert_array_equal(data[f"y_{split}"], sk_digits.target[rows])
        np.testing.assert_allclose(data[f"X_{split}"][:, 0], pixels[rows] - mean, atol=1e-6)
    np.testing.assert_allclose(data["X_train"].mean(axis=0), 0.0, atol=1e-6)
    assert set(np.concatenate(list(idx.values()))) == set(range(1797))


def test_digits_split_is_deterministic_for_a_seed():
    a, b, c = load_digits_data(seed=7), load_digits_data(seed=7), load_digits_data(seed=8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["y_train"], c["y_train"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_validation": 1797}, "num_validation=1797 leaves no training rows of 1797"),
        ({"num_validation": 1000, "num_test": 797}, r"num_validation=1000 \+ num_test=797 "),
        ({"num_test": -1}, "num_test must be >= 0, got -1"),
        ({"num_validation": 2.5}, "num_validation must be an integer, got 2.5"),
        ({"dtype": np.int32}, "dtype must be a floating-point dtype, got int32"),
    ],
)
def test_digits_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits_data(**kwargs)


# ---------------------------------------------------------------- CIFAR-10 archive


def _records(images_hwc: np.ndarray, labels: np.ndarray) -> bytes:
    """The official record layout, written plane by plane from HWC images."""
    out = bytearray()
    for img, label in zip(images_hwc, labels, strict=True):
        out.append(int(label))
        for channel in range(3):  # red, green, blue: each 32x32 row-major
            out += img[:, :, channel].tobytes()
    return bytes(out)


def _archive(members: dict[str, bytes]) -> bytes:
    """A .tar.gz holding ``members`` in the given order, under the official top folder."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        folder = tarfile.TarInfo(BIN)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{BIN}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(tar_bytes.getvalue(), compresslevel=1)


@pytest.fixture(scope="module")
def known():
    """Random pixels (HWC, as an image is usually held) and labels, and the official members,
    listed out of numeric order as in a real archive."""
    rng = np.random.default_rng(2024)
    train = rng.integers(0, 256, size=(N_TRAIN, 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, size=(N_TEST, 32, 32, 3), dtype=np.uint8)
    y_train = rng.integers(0, 10, size=N_TRAIN)
    y_test = rng.integers(0, 10, size=N_TEST)
    batches = {}
    for i in range(5):
        rows = slice(i * TRAIN_PER_BATCH, (i + 1) * TRAIN_PER_BATCH)
        batches[f"data_batch_{i + 1}.bin"] = _records(train[rows], y_train[rows])
    members = {
        "data_batch_1.bin": batches["data_batch_1.bin"],
        "batches.meta.txt": META,
        "data_batch_3.bin": batches["data_batch_3.bin"],
        "test_batch.bin": _records(test, y_test),
        "data_batch_5.bin": batches["data_batch_5.bin"],
        "data_batch_2.bin": batches["data_batch_2.bin"],
        "data_batch_4.bin": batches["data_batch_4.bin"],
    }
    return {"train": train, "test": test, "y_train": y_train, "y_test": y_test, **members}


@pytest.fixture(scope="module")
def archive(known) -> bytes:
    """The well-formed test archive (2,000 training + 500 test records)."""
    return _archive(_members(known))


def _members(known, **changes):
    names = [k for k in known if k.endswith((".bin", ".txt"))]
    members = {name: known[name] for name in names}
    members.update(changes)
    return {name: payload for name, payload in members.items() if payload is not None}


@pytest.fixture
def serve(http_server, tmp_path, monkeypatch):
    """serve(archive): put ``archive`` on the loopback server as cifar-10-binary.tar.gz and
    register its sha256 and size in place of the real ones; the cache starts empty."""
    monkeypatch.setenv("MLCORE_DATA_MIRROR", http_server.url)
    monkeypatch.setenv("MLCORE_DATA_DIR", str(tmp_path / "cache"))

    def serve_archive(archive: bytes):
        (http_server.root / CIFAR.filename).write_bytes(archive)
        entry = dataclasses.replace(
            CIFAR, sha256=hashlib.sha256(archive).hexdigest(), size=len(archive)
        )
        monkeypatch.setitem(registry.DATASETS, "cifar10", entry)
        return http_server

    return serve_archive


def test_registry_holds_the_published_cifar10_numbers():
    assert CIFAR.filename == "cifar-10-binary.tar.gz"
    assert CIFAR.size == 170_052_171
    assert CIFAR.sha256 == "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
    assert registry.get_dataset("cifar10") is CIFAR


def test_cifar10_parsed_through_fetch_equals_the_written_pixels(serve, archive, known, tmp_path):
    server = serve(archive)
    path = fetch("cifar10")
    assert path == tmp_path / "cache" / "cifar-10-binary.tar.gz"
    assert server.hits == ["/cifar-10-binary.tar.gz"]
    X_train, y_train, X_test, y_test = load_cifar10(path)
    assert X_train.shape == (N_TRAIN, 3, 32, 32) and X_train.dtype == np.uint8
    assert X_test.shape == (N_TEST, 3, 32, 32) and X_test.dtype == np.uint8
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_array_equal(X_train, known["train"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(X_test, known["test"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(y_train, known["y_train"])
    np.testing.assert_array_equal(y_test, known["y_test"])
    # byte by byte: record 7 of data_batch_2 is training row 407; red plane, then green, blue
    record = known["data_batch_2.bin"][7 * RECORD : 8 * RECORD]
    assert y_train[407] == record[0]
    assert X_train[407, 0, 0, 0] == record[1] and X_train[407, 0, 1, 2] == record[1 + 32 + 2]
    assert X_train[407, 1, 0, 0] == record[1 + 1024]
    assert X_train[407, 2, 31, 31] == record[RECORD - 1]


def test_members_are_read_in_archive_order(serve, archive, known, monkeypatch):
    """A gzip stream cannot seek back: each backward seek re-inflates it from the start (on
    the real archive, 170 MB each time). Only the return after the header scan is allowed."""
    serve(archive)
    path = fetch("cifar10")
    real_seek, backward = gzip.GzipFile.seek, []

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_SET and offset < self.tell():
            backward.append(offset)
        return real_seek(self, offset, whence)

    monkeypatch.setattr(gzip.GzipFile, "seek", seek)
    X_train, *_ = load_cifar10(path)
    assert len(backward) == 1
    np.testing.assert_array_equal(X_train[-1], known["train"][-1].transpose(2, 0, 1))


def test_get_cifar10_data_splits_and_subtracts_the_train_mean(serve, archive, known):
    serve(archive)
    data = get_cifar10_data(num_training=1500, num_validation=300, num_test=400)
    train = known["train"].transpose(0, 3, 1, 2).astype(np.float64)
    test = known["test"].transpose(0, 3, 1, 2).astype(np.float64)
    mean = train[:1500].mean(axis=0)
    assert data["X_train"].shape == (1500, 3, 32, 32) and data["X_train"].dtype == np.float32
    assert data["X_val"].shape == (300, 3, 32, 32) and data["X_test"].shape == (400, 3, 32, 32)
    np.testing.assert_allclose(data["X_train"], train[:1500] - mean, atol=1e-4)
    np.testing.assert_allclose(data["X_val"], train[1500:1800] - mean, atol=1e-4)
    np.testing.assert_allclose(data["X_test"], test[:400] - mean, atol=1e-4)
    np.testing.assert_array_equal(data["y_train"], known["y_train"][:1500])
    np.testing.assert_array_equal(data["y_val"], known["y_train"][1500:1800])
    np.testing.assert_array_equal(data["y_test"], known["y_test"][:400])
    np.testing.assert_allclose(data["X_train"].mean(axis=0), 0.0, atol=1e-4)

    raw = get_cifar10_data(
        num_training=10, num_validation=5, num_test=3, subtract_mean=False, dtype=np.float64
    )
    assert raw["X_val"].dtype == np.float64
    np.testing.assert_array_equal(raw["X_val"], train[10:15])
    np.testing.assert_array_equal(raw["X_test"], test[:3])


def test_loading_cifar10_holds_at_most_two_copies_of_the_images(serve, archive, known):
    serve(archive)
    path = fetch("cifar10")  # the download is not what is measured
    tracemalloc.start()
    try:
        parsed = load_cifar10(path)
        _, load_peak = tracemalloc.get_traced_memory()
        del parsed
        tracemalloc.reset_peak()
        data = get_cifar10_data(num_training=1800, num_validation=200, num_test=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # parsing fills preallocated uint8 arrays: no list of batches concatenated afterwards
    uint8_bytes = (N_TRAIN + N_TEST) * 3072
    assert uint8_bytes <= load_peak <= uint8_bytes + 2 * TRAIN_PER_BATCH * RECORD + 500_000
    float_bytes = sum(data[k].nbytes for k in ("X_train", "X_val", "X_test"))
    assert float_bytes == (N_TRAIN + N_TEST) * 3072 * 4
    assert peak >= float_bytes  # tracemalloc does see numpy's arrays
    assert peak <= 2 * float_bytes + 1_000_000, f"peak {peak / float_bytes:.2f} x the output"
    # the design: whole-archive uint8 (1/4 of float32) + the float output + one member's bytes
    assert peak <= 1.25 * float_bytes + 2 * TRAIN_PER_BATCH * RECORD + 500_000


def test_bad_split_sizes_are_named(serve, archive):
    serve(archive)
    with pytest.raises(
        ValueError, match=r"num_training=1900 \+ num_validation=101 exceeds .* 2000"
    ):
        get_cifar10_data(num_training=1900, num_validation=101)
    with pytest.raises(ValueError, match="num_test=501 exceeds the 500 test images"):
        get_cifar10_data(num_training=100, num_validation=10, num_test=501)
    with pytest.raises(ValueError, match="num_training must be >= 1, got 0"):
        get_cifar10_data(num_training=0)
    with pytest.raises(ValueError, match="dtype must be a floating-point dtype, got uint8"):
        get_cifar10_data(num_training=10, dtype=np.uint8)


def test_corrupted_archive_fails_the_checksum_and_leaves_no_file(serve, archive, tmp_path):
    server = serve(archive)
    corrupted = bytearray(archive)
    corrupted[len(corrupted) // 2] ^= 1
    (server.root / CIFAR.filename).write_bytes(bytes(corrupted))
    with pytest.raises(DataError, match="cifar10: checksum mismatch .* discarded"):
        get_cifar10_data()
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"data_batch_3.bin": "truncated"},
            f"member '{BIN}/data_batch_3.bin' has 1229195 bytes, not a positive multiple of "
            "the 3073-byte",
        ),
        ({"test_batch.bin": None}, f"member '{BIN}/test_batch.bin' is missing"),
        (
            {"data_batch_2.bin": "label 10"},
            f"member '{BIN}/data_batch_2.bin' record 7 has label 10",
        ),
    ],
)
def test_malformed_archive_names_the_archive_and_member(serve, known, change, match):
    ((name, how),) = change.items()
    if how == "truncated":
        change = {name: known[name][:-5]}
    elif how == "label 10":
        payload = bytearray(known[name])
        payload[7 * RECORD] = 10
        change = {name: bytes(payload)}
    serve(_archive(_members(known, **change)))
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz: " + re.escape(match)):
        get_cifar10_data(num_training=10, num_validation=0, num_test=0)


def test_unreadable_archive_is_a_data_error(archive, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_cifar10(tmp_path / "missing.tar.gz")
    bad = tmp_path / "cifar-10-binary.tar.gz"
    bad.write_bytes(b"not a gzip file at all")
    with pytest.raises(DataError, match=f"{re.escape(str(bad))}: not a readable CIFAR-10"):
        load_cifar10(bad)
    bad.write_bytes(archive[: len(archive) // 2])  # a download cut off mid-stream
    with pytest.raises(DataError, match="not a readable CIFAR-10 .*ended before"):
        load_cifar10(bad)


def test_class_names_and_dispatch(serve, archive, known):
    assert CIFAR10_CLASSES == tuple(META.decode().split())  # the archive's batches.meta.txt
    assert class_names("cifar10")[3] == "cat" and len(class_names("cifar10")) == 10
    assert class_names("digits") == DIGITS_CLASSES == tuple("0123456789")
    with pytest.raises(ValueError, match="unknown image dataset 'mnist'; known: cifar10, digits"):
        load_image_dataset("mnist")
    with pytest.raises(ValueError, match="unknown image dataset 'mnist'; known: cifar10, digits"):
        class_names("mnist")
    digits = load_image_dataset("digits", seed=5)
    np.testing.assert_array_equal(digits["X_test"], load_digits_data(seed=5)["X_test"])
    serve(archive)
    cifar = load_image_dataset("cifar10", num_training=20, num_validation=5, num_test=5)
    assert cifar["X_train"].shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(cifar["y_val"], known["y_train"][20:25])
