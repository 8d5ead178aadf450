"""The dataset registry and `fetch`: download once with pooch, verify the sha256, reuse the cache.

Environment:
    MLCORE_DATA_DIR     where downloads are cached (default ``./data/raw``).
    MLCORE_DATA_MIRROR  a directory or an http(s) base URL that replaces every dataset's
                        canonical base URL, so the product runs offline from a local copy.
    MLCORE_DOWNLOAD_TIMEOUT  seconds to wait for a connection and, after that, between two
                        reads of a download (default 30): a server that stalls fails then.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pooch

from mlcore._validation import env_seconds


class DataError(ValueError):
    """A dataset could not be fetched or parsed; the message says which file and why."""


class PermanentDownloadError(DataError):
    """The server refused the file for good (HTTP 4xx such as 404 or 403): retrying cannot
    help."""


DEFAULT_DOWNLOAD_TIMEOUT = 30.0


@dataclass(frozen=True)
class Dataset:
    name: str
    url: str
    sha256: str
    size: int
    format: str
    description: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            name="housing_scale",
            url="https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/regression/housing_scale",
            sha256="bbacd2f526a038499717d5dc4b8895e6baf1e2351895b9360a84bcb31e104476",
            size=72_154,
            format="libsvm",
            description="Boston housing (UCI), 506 rows x 13 features scaled to [-1, 1]",
        ),
        Dataset(
            name="cifar10",
            url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            size=170_052_171,
            format="cifar10-binary",
            description="CIFAR-10, binary version: 60,000 32x32 colour images in 10 classes",
        ),
    ]
}


def get_dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset {name!r}; known datasets: {known}") from None


def download_timeout() -> float:
    """``MLCORE_DOWNLOAD_TIMEOUT`` in seconds (default 30): connect and read timeout of a
    download."""
    return env_seconds("MLCORE_DOWNLOAD_TIMEOUT", DEFAULT_DOWNLOAD_TIMEOUT, error=DataError)


def data_dir() -> Path:
    return Path(os.environ.get("MLCORE_DATA_DIR", "data/raw"))


def _source_url(ds: Dataset) -> str:
    mirror = os.environ.get("MLCORE_DATA_MIRROR", "").strip()
    if not mirror:
        return ds.url
    if urlsplit(mirror).scheme in ("http", "https", "ftp", "file"):
        return mirror.rstrip("/") + "/" + ds.filename
    path = Path(mirror).expanduser().resolve() / ds.filename
    if not path.is_file():
        raise DataError(f"MLCORE_DATA_MIRROR={mirror!r} has no file {ds.filename!r} ({path})")
    return path.as_uri()


def _file_downloader(url: str, output_file, pooch_obj, check_only: bool = False):
    """pooch has no file:// downloader: copy the mirror's file (pooch then checks the hash)."""
    src = Path(urlsplit(url).path)
    if check_only:
        return src.is_file()
    with open(src, "rb") as fin:
        if isinstance(output_file, str | Path):
            with open(output_file, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copyfileobj(fin, output_file)
    return None


class RichProgress:
    """The progress-bar object pooch's HTTPDownloader accepts (total, update, reset, close),
    drawn with rich."""

    def __init__(self, description: str):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._progress.add_task(description, total=None)

    @property
    def total(self):
        return self._progress.tasks[0].total

    @total.setter
    def total(self, value):
        # pooch sets the total once the response headers are in: only then is there a bar to draw
        self._progress.start()
        self._progress.update(self._task, total=value or None)

    def update(self, n: int) -> None:
        self._progress.update(self._task, advance=n)

    def reset(self) -> None:
        self._progress.reset(self._task, total=self.total)

    def close(self) -> None:
        self._progress.stop()


def fetch(name: str, progress: bool | None = None) -> Path:
    """Return the local path of dataset ``name``, downloading and verifying it if needed.

    A cached file with the right sha256 is reused without touching the network. A download
    whose checksum does not match raises `DataError` and leaves no file in the cache
    (pooch writes to a temporary file and only moves it in place once the hash matches).
    """
    ds = get_dataset(name)
    target_dir = data_dir()
    cached = target_dir / ds.filename
    if cached.is_file() and pooch.file_hash(str(cached)) == ds.sha256:
        return cached  # whatever the mirror holds or lacks
    url = _source_url(ds)
    if progress is None:
        progress = sys.stderr.isatty()
    if url.startswith("file:"):
        downloader = _file_downloader
    else:
        bar = RichProgress(f"downloading {ds.filename}") if progress else False
        downloader = pooch.HTTPDownloader(progressbar=bar, timeout=download_timeout())
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = pooch.retrieve(
            url=url,
            known_hash=f"sha256:{ds.sha256}",
            fname=ds.filename,
            path=target_dir,
            downloader=downloader,
            progressbar=False,
        )
    except ValueError as exc:  # pooch raises ValueError on a hash mismatch
        if "hash" in str(exc).lower():
            raise DataError(
                f"{ds.name}: checksum mismatch for {url} (expected sha256 {ds.sha256}); "
                "the download was discarded"
            ) from exc
        raise
    except OSError as exc:  # network errors (requests' errors subclass OSError)
        raise _download_error(ds, url, exc) from exc
    return Path(path)


def _download_error(ds: Dataset, url: str, exc: OSError) -> Exception:
    """A permanent HTTP refusal (4xx but 408 and 429) as `PermanentDownloadError`; anything
    else (5xx, a refused connection, a timeout) as `ConnectionError`, which may heal."""
    import requests

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, requests.HTTPError) and status is not None:
        reason = getattr(exc.response, "reason", "") or ""
        if 400 <= status < 500 and status not in (408, 429):
            return PermanentDownloadError(
                f"{ds.name}: could not download {url}: HTTP {status} {reason}".rstrip()
                + " (permanent, not retried)"
            )
        return ConnectionError(f"{ds.name}: could not download {url}: HTTP {status} {reason}")
    # a stall before the headers is a Timeout; one mid-body reaches us as a ConnectionError
    # wrapping urllib3's ReadTimeoutError
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc):
        return ConnectionError(
            f"{ds.name}: could not download {url}: no answer within {download_timeout():g} s "
            "(MLCORE_DOWNLOAD_TIMEOUT)"
        )
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ConnectionError(f"{ds.name}: could not download {url}: {first}")
