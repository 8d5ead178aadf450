"""The download layer for real: a loopback HTTP server serving the real housing_scale file."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from prefect import flow

from mlcore.data import DataError, fetch, load_libsvm
from mlcore.data.registry import PermanentDownloadError, get_dataset
from tasks.data import fetch_cached, fetch_dataset, load_split, standardize

HOUSING = get_dataset("housing_scale")


@pytest.fixture
def served(http_server, shared_data, tmp_path, monkeypatch):
    """housing_scale served over loopback HTTP, fetched into an empty cache."""
    shutil.copy(shared_data / "housing_scale", http_server.root / "housing_scale")
    monkeypatch.setenv("MLCORE_DATA_MIRROR", http_server.url)
    monkeypatch.setenv("MLCORE_DATA_DIR", str(tmp_path / "cache"))
    return http_server


def test_fetch_downloads_verifies_and_reuses_the_cache(served, tmp_path):
    path = fetch("housing_scale")
    assert path == tmp_path / "cache" / "housing_scale"
    assert path.stat().st_size == HOUSING.size == 72_154
    assert served.hits == ["/housing_scale"]
    assert fetch("housing_scale") == path  # second fetch: from the cache, no request
    assert served.hits == ["/housing_scale"]
    X, y = load_libsvm(path)
    assert X.shape == (506, 13) and y.shape == (506, 1) and X.dtype == np.float64


def test_corrupted_download_fails_the_checksum_and_leaves_no_file(served, tmp_path):
    data = bytearray((served.root / "housing_scale").read_bytes())
    data[100] ^= 1  # one flipped bit
    (served.root / "housing_scale").write_bytes(bytes(data))
    with pytest.raises(DataError, match="housing_scale: checksum mismatch .* discarded"):
        fetch("housing_scale")
    cache = tmp_path / "cache"
    assert list(cache.iterdir()) == []


def test_corrupted_cached_file_is_replaced(served, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "housing_scale").write_text("not the data\n")
    path = fetch("housing_scale")
    assert len(served.hits) == 1 and path.stat().st_size == HOUSING.size


@pytest.mark.slow  # the session's Prefect server
def test_unreachable_server_fails_clearly_after_the_retries(served, prefect_harness):
    served.status_for["housing_scale"] = 503

    @flow
    def fetch_only():
        return fetch_dataset.with_options(retries=2, retry_delay_seconds=0)("housing_scale")

    with pytest.raises(
        ConnectionError, match="housing_scale: could not download http://127.0.0.1:.*503"
    ):
        fetch_only()
    assert served.hits == ["/housing_scale"] * 3  # one try and two retries


def test_refused_connection_is_a_clear_error(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLCORE_DATA_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLCORE_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(
        ConnectionError, match=f"could not download http://127.0.0.1:{port}/housing_scale"
    ):
        fetch_dataset.fn("housing_scale")
    assert not (tmp_path / "cache" / "housing_scale").exists()


def _fetch_run(served):
    """One run of the fetch task: its state's name, whether it completed, its path and the
    requests the server has seen so far."""
    state = fetch_cached("housing_scale", return_state=True)
    return state.name, state.is_completed(), state.result(), list(served.hits)


@pytest.mark.slow  # the session's Prefect server
def test_fetch_dataset_task_is_cached_on_name_and_sha(served, prefect_harness, tmp_path):
    """The second run is answered by Prefect's cache (state Cached), not by running the task
    again: mlcore's file cache would serve it without a request too, so only the state tells
    the two apart. A cached path whose file is gone is not a hit: the task downloads again."""
    path = fetch("housing_scale")  # the file is in the cache folder before the task first runs
    assert path == tmp_path / "cache" / "housing_scale" and served.hits == ["/housing_scale"]

    @flow
    def fetch_thrice():
        runs = [_fetch_run(served), _fetch_run(served)]
        path.unlink()
        return [*runs, _fetch_run(served)]

    first, second, after_delete = fetch_thrice()
    assert first == ("Completed", True, str(path), ["/housing_scale"])  # from the file cache
    assert second == ("Cached", True, str(path), ["/housing_scale"])
    assert after_delete == ("Completed", True, str(path), ["/housing_scale"] * 2)
    assert path.is_file()


@pytest.mark.slow  # the session's Prefect server
def test_fetch_dataset_task_run_right_after_the_download_is_cached(served, prefect_harness):
    @flow
    def fetch_twice():
        return _fetch_run(served), _fetch_run(served)

    (first, *_, first_hits), (second, *_, second_hits) = fetch_twice()
    assert (first, first_hits) == ("Completed", ["/housing_scale"])
    assert (second, second_hits) == ("Cached", ["/housing_scale"])


def test_directory_mirror_and_its_errors(data_env, tmp_path, monkeypatch):
    assert fetch("housing_scale").read_bytes()[:3] == b"24 "
    # a verified cached copy is used even where the mirror lacks the file
    monkeypatch.setenv("MLCORE_DATA_MIRROR", str(tmp_path / "empty"))
    assert fetch("housing_scale") == data_env / "housing_scale"
    monkeypatch.setenv("MLCORE_DATA_MIRROR", str(tmp_path / "empty"))
    monkeypatch.setenv("MLCORE_DATA_DIR", str(tmp_path / "other-cache"))
    with pytest.raises(DataError, match="MLCORE_DATA_MIRROR=.* has no file 'housing_scale'"):
        fetch("housing_scale")
    with pytest.raises(DataError, match="unknown dataset 'nope'; known datasets: .*housing_scale"):
        fetch("nope")


@pytest.mark.parametrize(
    "content, match",
    [
        ("24.0 1:0.5 2:abc\n", "not a valid LIBSVM/svmlight file"),
        ("24.0 1:0.5 1:0.3\n", "not a valid LIBSVM/svmlight file"),
        ("", "not a valid LIBSVM/svmlight file|no data rows"),
    ],
)
def test_malformed_libsvm_file_names_the_file(tmp_path, content, match):
    bad = tmp_path / "bad.svm"
    bad.write_text(content)
    with pytest.raises(DataError, match=f"{bad}: ({match})"):
        load_libsvm(bad)
    with pytest.raises(DataError, match="no such file"):
        load_libsvm(tmp_path / "missing")


def test_load_split_and_standardize_tasks(data_env, shared_data):
    split = load_split.fn(str(shared_data / "housing_scale"))
    assert [len(split[k]) for k in ("X_train", "X_val", "X_test")] == [272, 67, 167]
    data, scaler = standardize.fn(split)
    np.testing.assert_allclose(data["X_train"].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(scaler.mean_, split["X_train"].mean(axis=0))
    np.testing.assert_allclose(data["X_test"], (split["X_test"] - scaler.mean_) / scaler.scale_)


@pytest.mark.slow  # the session's Prefect server
@pytest.mark.parametrize("status", [404, 403])
def test_permanent_http_errors_fail_at_once_and_are_not_retried(served, prefect_harness, status):
    served.status_for["housing_scale"] = status

    @flow
    def fetch_only():
        return fetch_dataset.with_options(retries=2, retry_delay_seconds=0)("housing_scale")

    with pytest.raises(
        PermanentDownloadError,
        match=rf"^housing_scale: could not download {served.url}/housing_scale: HTTP {status} "
        r".*\(permanent, not retried\)$",
    ):
        fetch_only()
    assert served.hits == ["/housing_scale"]  # one request: no retry by the task nor by pooch
    assert list((served.root.parent / "cache").iterdir()) == []


@pytest.fixture
def stalling_server():
    """A real TCP server on a free loopback port that accepts connections and then stalls:
    for ``/headers-then-stall`` it sends the status line and headers (a 72,154-byte body
    announced) and 100 bytes of body, for any other path nothing at all."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)
            request = conn.recv(4096)
            if b"/headers-then-stall" in request.split(b"\r\n", 1)[0]:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 72154\r\n"
                    b"Content-Type: application/octet-stream\r\n\r\n" + b"24 " * 33 + b"x"
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in accepted:
            conn.close()


@pytest.mark.parametrize("path", ["", "/headers-then-stall"])
def test_stalling_server_hits_the_read_timeout(stalling_server, tmp_path, monkeypatch, path):
    mirror = stalling_server + path
    monkeypatch.setenv("MLCORE_DATA_MIRROR", mirror)
    monkeypatch.setenv("MLCORE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLCORE_DOWNLOAD_TIMEOUT", "0.5")
    with pytest.raises(ConnectionError) as info:
        fetch_dataset.fn("housing_scale")
    assert str(info.value) == (
        f"housing_scale: could not download {mirror}/housing_scale: no answer within 0.5 s "
        "(MLCORE_DOWNLOAD_TIMEOUT)"
    )
    assert list((tmp_path / "cache").iterdir()) == []  # the partial download was removed


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_download_timeout_is_a_clear_error(served, monkeypatch, value):
    monkeypatch.setenv("MLCORE_DOWNLOAD_TIMEOUT", value)
    with pytest.raises(DataError, match=f"MLCORE_DOWNLOAD_TIMEOUT='{value}' is not a positive"):
        fetch("housing_scale")
    assert served.hits == []


@pytest.mark.slow  # the session's Prefect server
def test_a_changed_file_or_changed_code_misses_the_split_cache(
    prefect_harness, shared_data, tmp_path, monkeypatch
):
    """The split is cached on the file's content and the code that parses and splits it: the
    same file is a hit, one changed value a miss, a changed source of mlcore.data.libsvm a miss,
    and the result read back is the arrays the task computed (an .npz, nothing pickled)."""
    import mlcore.data.libsvm

    path = tmp_path / "housing_scale"
    # a label no other test uses, so that the first run cannot hit another test's result
    unique = f"{24 + np.random.default_rng().random():.9f} "
    path.write_text((shared_data / "housing_scale").read_text().replace("24 ", unique, 1))
    code = tmp_path / "libsvm.py"
    code.write_text(Path(mlcore.data.libsvm.__file__).read_text() + "\n# changed\n")

    def split():
        state = load_split(str(path), return_state=True)
        return state.name, state.result()

    @flow
    def split_five_times():
        seen = [split(), split()]
        path.write_text(path.read_text().replace(unique, "25 ", 1))  # one value changed
        seen.append(split())
        monkeypatch.setattr(mlcore.data.libsvm, "__file__", str(code))  # the code changed
        seen += [split(), split()]
        return seen

    seen = split_five_times()
    assert [name for name, _ in seen] == ["Completed", "Cached", "Completed", "Completed", "Cached"]
    for name in ("X_train", "y_train", "X_test"):
        np.testing.assert_array_equal(seen[0][1][name], seen[1][1][name])
    labels = [sum(result[f"y_{k}"].sum() for k in ("train", "val", "test")) for _, result in seen]
    assert labels[2] == pytest.approx(labels[0] - float(unique) + 25)  # the changed label
