"""Where studies live: SQLite in the repo by default, any SQLAlchemy URL on request.

- The default is ``sqlite:///<repo>/tuning/optuna.db`` (an absolute path, so the temporary
  copies of ``dvc exp run --queue`` share it). PostgreSQL (``postgresql://user@host/db``, driver
  psycopg 3, ``pip install -e '.[postgres]'``) serves workers on several machines.
- A storage is reached once before anything else (`check_reachable`): an unreachable server, a
  missing driver or a bad URL is one line within ``connect_timeout`` seconds, not a hang.
- Every storage records heartbeats of running trials: a trial whose worker died (SIGKILL,
  power loss) is marked FAIL after ``grace_period`` seconds and queued again
  (`RetryHeartbeatStaleTrialCallback`, its retry carries ``failed_trial`` and ``retry_history``
  in its system attributes).
- `Claim` serialises "count the trials, then start one" among the workers of a study, so that
  a study ends with exactly the requested number of finished trials.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path
from typing import Any

from sparsebench.suite.space import TuneParams
from sparsebench.util.errors import UsageError
from sparsebench.util.paths import repo_root

MAX_RETRY = 3  # a trial whose worker keeps dying is queued again at most this often


def default_url() -> str:
    return f"sqlite:///{repo_root() / 'tuning' / 'optuna.db'}"


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide that parsing could find
        return url


def _backend(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


def engine_kwargs(url: str, timeout: int) -> dict[str, Any]:
    """Connection settings: SQLite waits for the other workers' writes; servers time out."""
    backend = _backend(url)
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    if backend in ("postgresql", "mysql"):
        return {"connect_args": {"connect_timeout": timeout}, "pool_pre_ping": True}
    return {}


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def check_reachable(url: str, where: str, timeout: int) -> None:
    """Open one connection to ``url`` or refuse in one line within ``timeout`` + 1 seconds.

    Raises:
        UsageError: a bad URL, a missing driver, a missing folder, or no answer.
    """
    import sqlalchemy
    from sqlalchemy.engine import make_url

    allowed = "allowed: an SQLAlchemy URL such as sqlite:////abs/path/optuna.db or " \
              "postgresql://user@host:5432/db"
    try:
        make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"{where}: {url!r} is not a database URL; {allowed}") from None
    shown = redact(url)
    if _backend(url) == "sqlite":
        path = _sqlite_path(url)
        if path is None:
            raise UsageError(f"{where}: {shown!r} is in memory, so workers cannot share it; "
                             f"{allowed}")
        if url == default_url():
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.is_dir():
            raise UsageError(f"{where}: {shown!r}: the folder {str(path.parent)!r} does not "
                             f"exist; {allowed}")
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                          **engine_kwargs(url, timeout))
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        raise UsageError(f"{where}: {shown!r} needs a database driver that is not installed "
                         f"({exc}); allowed: sqlite, or postgresql with psycopg "
                         "(pip install 'psycopg[binary]')") from None
    result: dict[str, BaseException | None] = {}

    def connect() -> None:
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            result["error"] = None
        except BaseException as exc:  # reported below, in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=connect, daemon=True)  # a resolver may ignore timeouts
    thread.start()
    thread.join(timeout + 1)
    if "error" not in result:
        raise UsageError(f"{where}: {shown!r} did not answer within {timeout} s; allowed: a "
                         "reachable database")
    if result["error"] is not None:
        exc = result["error"]
        reason = str(getattr(exc, "orig", None) or exc).strip(" '\"\n").splitlines()
        raise UsageError(f"{where}: cannot reach {shown!r} ({reason[0] if reason else exc!r}); "
                         "allowed: a reachable database")
    engine.dispose()


def open_storage(url: str, tune: TuneParams):
    """An `optuna.storages.RDBStorage` with heartbeats and retries of stale trials."""
    import optuna  # lazy: optuna takes about 2 s to import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs(url, tune.connect_timeout),
            heartbeat_interval=tune.heartbeat_interval, grace_period=tune.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRY))


class Claim:
    """A lock held from "count the trials" until the new trial is RUNNING in the storage.

    PostgreSQL: a session advisory lock (workers on several machines). Otherwise a file lock
    (``filelock.FileLock``, an ``flock``): beside a SQLite database, or under ``<repo>/tuning/``
    (workers on this machine). Either is released by the system when its holder dies.
    """

    def __init__(self, url: str, study_name: str, timeout: int):
        self.url, self.name, self.timeout = url, study_name, timeout
        self._handle: Any = None
        self._engine: Any = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def _key(self) -> int:
        digest = hashlib.blake2b(self.name.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def acquire(self) -> None:
        if self.held:
            return
        if _backend(self.url) == "postgresql":
            import sqlalchemy

            if self._engine is None:
                self._engine = sqlalchemy.create_engine(
                    self.url, poolclass=sqlalchemy.pool.NullPool,
                    **engine_kwargs(self.url, self.timeout))
            conn = self._engine.connect()
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key()})
            self._handle = conn
            return
        from filelock import FileLock

        db = _sqlite_path(self.url) if _backend(self.url) == "sqlite" else None
        path = db.with_name(db.name + ".claim") if db else repo_root() / "tuning" / "claim.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, thread_local=False)
        lock.acquire()
        self._handle = lock

    def release(self) -> None:
        if not self.held:
            return
        handle, self._handle = self._handle, None
        if _backend(self.url) == "postgresql":
            import sqlalchemy

            handle.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key()})
            handle.close()
        else:
            handle.release()
