"""A persistent, per-machine record of autotuning results.

Autotuning measures every candidate backend, which is slow, so the winner for each
problem is kept on disk and reused by later processes. The file lives in a user's cache
directory, is shared by processes that may tune at the same moment, and may be cut short
by a crash, so it is handled defensively:

* Writers serialise a read-merge-write cycle under a :class:`filelock.FileLock` on a
  sibling ``.lock`` file: two processes tuning at once never lose each other's entries.
* Every write goes to a temporary file in the same directory, is fsynced, and replaces
  the cache with :func:`os.replace`. Readers therefore see a complete old or a complete
  new file and need no lock; a writer killed mid-write leaves the old file intact and
  at worst a temporary file, which is never read and is removed once it is old.
* A file that is not a valid cache of this format and version is never trusted. It is
  reported with a :class:`TuningCacheWarning` and moved aside (``<name>.corrupt``) by
  the next write, so nothing is destroyed without a trace.
* A location that cannot be written degrades to an in-memory cache for the rest of the
  process: failing to *remember* a measurement must not fail the convolution.

Keys are opaque: the caller folds everything a measurement depends on (hardware
fingerprint, software versions, the problem) into the key, so an entry that no longer
applies is simply never looked up again, and the size bound eventually evicts it.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import platformdirs
from filelock import FileLock

from .errors import warn

FORMAT = "convengine-tuning-cache"
VERSION = 1

#: Seconds a writer waits for another to finish; writes take milliseconds, so a lock
#: held this long belongs to a stuck process and waiting longer would stall the caller.
LOCK_TIMEOUT = 30.0
#: Temporary files older than this (seconds) were left by a writer that died; writers
#: hold the lock while their temporary file exists, so none lives nearly this long.
STALE_TEMP_AGE = 600.0

_TEMP_SUFFIX = ".tmp"


class TuningCacheWarning(UserWarning):
    """The tuning cache could not be read or written; results will be measured again."""


class _Unusable(Exception):
    """The file's content is not a tuning cache that this version can trust."""


class TuningCache:
    """Persistent map from an opaque key to a JSON-serialisable tuning record.

    On disk: ``{"format": FORMAT, "version": VERSION, "entries": {key: {"record": ...,
    "last_used": unix_time}}}``, at most ``max_entries`` entries, least recently used
    evicted first. Safe to share between threads and between processes.
    """

    def __init__(self, path: Optional[os.PathLike] = None, max_entries: int = 2048):
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.path = Path(path) if path is not None else self.default_path()
        self.max_entries = max_entries
        self._corrupt_path = self.path.with_name(self.path.name + ".corrupt")
        self._file_lock = FileLock(self.path.with_name(self.path.name + ".lock"), timeout=LOCK_TIMEOUT)
        self._lock = threading.Lock()
        # The file's entries as last read, or the whole cache once in memory-only mode.
        self._entries: dict = {}
        # Identity of the file version _entries was read from; None when there was none.
        self._signature = None
        # key -> time of a get() hit not yet written to the file (written with the next put).
        self._touched: dict = {}
        self._memory_only = False
        self._warned: set = set()

    @staticmethod
    def default_path() -> Path:
        """``$CONVENGINE_CACHE_DIR/tuning.json`` if set, else in the user's cache directory."""
        directory = os.environ.get("CONVENGINE_CACHE_DIR") or platformdirs.user_cache_dir(
            "convengine", appauthor=False
        )
        return Path(directory) / "tuning.json"

    def get(self, key: str) -> Optional[dict]:
        """The record stored under ``key`` (a copy), or ``None``.

        Takes no file lock, and re-reads the file only when it has been replaced since
        the last read, so repeated lookups cost one ``stat``.
        """
        with self._lock:
            self._refresh()
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._touched[key] = time.time()
            return copy.deepcopy(entry["record"])

    def put(self, key: str, record: dict) -> None:
        """Store ``record`` under ``key``, evicting the least recently used entries beyond the bound."""
        if not isinstance(record, dict):
            raise TypeError(f"a tuning record must be a dict, got {type(record).__name__}")
        # A private copy exactly as a reader will load it; unserialisable records fail here,
        # before anything is written.
        record = json.loads(json.dumps(record))

        def insert(entries: dict) -> None:
            entries[key] = {"record": record, "last_used": time.time()}
            excess = len(entries) - self.max_entries
            if excess > 0:
                others = (k for k in entries if k != key)
                for old in heapq.nsmallest(excess, others, key=lambda k: entries[k]["last_used"]):
                    del entries[old]

        self._update(insert)

    def clear(self) -> None:
        """Remove every entry (for this process and, when writable, on disk)."""
        self._update(dict.clear)

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._entries)

    def _refresh(self) -> None:
        """Bring ``_entries`` up to date with the file, reading it only if it was replaced."""
        if self._memory_only:
            return
        try:
            if _signature(os.stat(self.path)) == self._signature:
                return
            self._signature, entries = self._load()
        except FileNotFoundError:
            self._signature, entries = None, {}
        except OSError as exc:
            self._warn_once(f"cannot read tuning cache {self.path}: {exc}")
            self._signature, entries = None, {}
        self._entries = {} if entries is None else entries

    def _load(self) -> tuple:
        """Read the file: ``(signature, entries)``, entries ``None`` (after a warning) if untrustworthy."""
        with open(self.path, "rb") as f:
            signature = _signature(os.fstat(f.fileno()))
            raw = f.read()
        try:
            return signature, _parse(raw)
        except _Unusable as exc:
            self._warn_once(
                f"ignoring tuning cache {self.path}: {exc}; "
                f"the next write moves it to {self._corrupt_path.name}"
            )
            return signature, None

    def _update(self, change: Callable[[dict], None]) -> None:
        """Apply ``change`` to the entries, on disk if possible, else in memory from now on."""
        with self._lock:
            if not self._memory_only:
                try:
                    self._update_file(change)
                    return
                except OSError as exc:
                    self._memory_only = True
                    self._warn_once(
                        f"cannot write tuning cache {self.path} ({exc}); "
                        "tuning results are kept in memory for the rest of this process"
                    )
            self._apply_touches(self._entries)
            change(self._entries)

    def _update_file(self, change: Callable[[dict], None]) -> None:
        """Read-merge-write under the file lock; the fresh read is what keeps concurrent entries."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._file_lock:
            self._remove_stale_temps()
            try:
                _, entries = self._load()
            except FileNotFoundError:
                entries = {}
            if entries is None:
                os.replace(self.path, self._corrupt_path)
                entries = {}
            self._apply_touches(entries)
            change(entries)
            self._signature = self._write(entries)
            self._entries = entries

    def _apply_touches(self, entries: dict) -> None:
        """Carry the recent get() hits into ``last_used``, so eviction is least-recently-*used*."""
        for key, when in self._touched.items():
            entry = entries.get(key)
            if entry is not None and entry["last_used"] < when:
                entry["last_used"] = when
        self._touched.clear()

    def _write(self, entries: dict):
        """Atomically replace the file with ``entries``; return the new file's signature."""
        document = {"format": FORMAT, "version": VERSION, "entries": entries}
        data = json.dumps(document, sort_keys=True, indent=1).encode("utf-8")
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=_TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return _signature(os.stat(self.path))

    def _remove_stale_temps(self) -> None:
        """Delete temporary files left by writers killed mid-write (best effort)."""
        prefix = self.path.name + "."
        cutoff = time.time() - STALE_TEMP_AGE
        with contextlib.suppress(OSError):
            for item in os.scandir(self.path.parent):
                if item.name.startswith(prefix) and item.name.endswith(_TEMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        if item.stat().st_mtime < cutoff:
                            os.unlink(item.path)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warn(message, TuningCacheWarning)  # at the caller's line, however deep the cache was reached


def _signature(st: os.stat_result) -> tuple:
    """Identity of one version of the file: os.replace always installs a new inode."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _parse(raw: bytes) -> dict:
    """The entries of a serialised cache; raise :class:`_Unusable` saying why it is not one."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _Unusable(f"not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _Unusable(f"not a {FORMAT} file")
    if document.get("version") != VERSION:
        raise _Unusable(f"unsupported version {document.get('version')!r} (expected {VERSION})")
    entries = document.get("entries")
    if not isinstance(entries, dict):
        raise _Unusable("'entries' is not an object")
    for key, entry in entries.items():
        if not _is_entry(entry):
            raise _Unusable(f"entry {key!r} is malformed")
    return entries


def _is_entry(entry) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("record"), dict):
        return False
    last_used = entry.get("last_used")
    return isinstance(last_used, (int, float)) and not isinstance(last_used, bool)
