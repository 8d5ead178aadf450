"""The lock around moving a registered model's ``champion`` alias (``tasks.registry``): two
flows finishing at once must not both take the alias from the same holder. On a store on this
machine's disk, a file lock beside it; on a server store, shared by machines that share no
folder, a lock held in the store itself through MLflow's public API."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from tasks import tracking


@contextlib.contextmanager
def promotion_lock(tracking_uri: str, name: str = "") -> Iterator[None]:
    """An exclusive lock around read-compare-move of the ``champion`` alias of model ``name``.

    For a store on this machine's disk (``sqlite:///path`` or a ``file:`` / plain path) it is
    an ``fcntl`` lock on a file beside the store (``<db>.registry.lock``), held by every process
    that promotes into that store. A server store (``http(s)://``, a database server) is shared
    by machines that share no folder: there the lock is held in the store itself
    (`store_lock`)."""
    path = lock_path(tracking_uri)
    if path is None:
        if urlsplit(tracking_uri).scheme == "sqlite":  # a private in-memory store
            yield
        else:
            with store_lock(tracking.client(), f"{LOCK_PREFIX}{name}"):
                yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_path(tracking_uri: str) -> Path | None:
    """The lock file of a store on this machine's disk; None for a server store (and for a
    private in-memory SQLite store)."""
    parts = urlsplit(tracking_uri)
    if parts.scheme == "sqlite":
        db = tracking.sqlite_path(tracking_uri)
        if db is None:
            return None  # a private in-memory store: nothing to share
        return Path(db).with_name(Path(db).name + ".registry.lock")
    if parts.scheme in ("", "file"):
        root = Path(parts.path if parts.scheme else tracking_uri)
        return root / ".registry.lock"
    return None


LOCK_PREFIX = "mlcore-lock."
LOCK_TOKEN_TAG = "mlcore.lock_token"
# a lock whose holder has not let go after this long (the holder crashed: a promotion takes a
# few requests) is taken over, measured by the waiter's own clock (no clocks compared)
LOCK_STALE_S = 60.0
LOCK_WAIT_S = 300.0


@contextlib.contextmanager
def store_lock(client, lock: str, stale: float = LOCK_STALE_S, wait: float = LOCK_WAIT_S):
    """An exclusive lock held in an MLflow store through its public API: the registered model
    ``lock``, which exists while someone holds it. MLflow creates a registered model name at
    most once (a second ``create_registered_model`` fails with ``RESOURCE_ALREADY_EXISTS``),
    which is the compare-and-set the registry's aliases lack; it is deleted on release. A lock
    seen with the same token for ``stale`` seconds is taken to be a crashed holder's and
    deleted. Waiting longer than ``wait`` raises ``TimeoutError`` naming the lock."""
    import random
    import time
    import uuid

    from mlflow.exceptions import MlflowException

    token = uuid.uuid4().hex
    started = time.monotonic()
    seen: dict[str, float] = {}  # a holder's token -> when this process first saw it
    while True:
        try:
            client.create_registered_model(
                lock, tags={LOCK_TOKEN_TAG: token},
                description="mlcore's lock around moving the champion alias (held for the "
                "few requests of a promotion; a crashed holder's is taken over after "
                f"{stale:g} s)",
            )  # fmt: skip
            break
        except MlflowException as exc:
            # taken; or taken and let go in between: MLflow's store reads the holder back
            # after its insert failed, and answers RESOURCE_DOES_NOT_EXIST if it was deleted
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        if time.monotonic() - started > wait:
            raise TimeoutError(
                f"the registry lock {lock!r} was held by another process for more than "
                f"{wait:g} s (delete that registered model if no promotion is running)"
            )
        holder = _token(client, lock)
        if holder is None:
            continue  # released in between
        now = time.monotonic()
        if now - seen.setdefault(holder, now) > stale:
            # a crashed holder's: deleted only if it is still that one (another waiter may
            # have taken it over meanwhile)
            if _token(client, lock) == holder:
                with contextlib.suppress(MlflowException):
                    client.delete_registered_model(lock)
            seen.pop(holder)
            continue
        time.sleep(0.02 + 0.08 * random.random())
    try:
        yield
    finally:
        if _token(client, lock) == token:
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)


def _token(client, lock: str) -> str | None:
    """The token of the holder of ``lock``; None if nobody holds it (or it cannot be read)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(lock).tags.get(LOCK_TOKEN_TAG, "")
    except MlflowException:
        return None
