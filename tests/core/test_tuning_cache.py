import itertools
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import platformdirs
import pytest

from convengine.core import tuning_cache
from convengine.core.tuning_cache import FORMAT, VERSION, TuningCache, TuningCacheWarning

REPO_ROOT = Path(__file__).resolve().parents[2]
RECORD = {"backend": "im2col", "seconds": {"im2col": 0.0012, "direct": 0.0031}}


@pytest.fixture
def path(tmp_path):
    return tmp_path / "tuning.json"


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningCacheWarning)
        yield


def _temp_files(directory):
    return sorted(directory.glob("tuning.json.*.tmp"))


# --- basic behaviour ------------------------------------------------------------------


def test_round_trip_between_instances_in_the_documented_format(path, no_warnings):
    TuningCache(path).put("key-1", RECORD)
    assert TuningCache(path).get("key-1") == RECORD
    assert TuningCache(path).get("key-2") is None
    document = json.loads(path.read_text())
    assert document["format"] == FORMAT == "convengine-tuning-cache"
    assert document["version"] == VERSION == 1
    assert set(document) == {"format", "version", "entries"}
    assert document["entries"]["key-1"]["record"] == RECORD
    assert isinstance(document["entries"]["key-1"]["last_used"], float)


def test_records_are_copies(path):
    cache = TuningCache(path)
    record = {"backend": "fft", "seconds": [1.0]}
    cache.put("k", record)
    record["seconds"].append(2.0)
    cache.get("k")["seconds"].append(3.0)
    assert cache.get("k") == {"backend": "fft", "seconds": [1.0]}


def test_put_rejects_records_that_cannot_be_stored(path):
    cache = TuningCache(path)
    cache.put("k", RECORD)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        cache.put("bad", {"backend": object()})
    with pytest.raises(TypeError):
        cache.put("bad", ["not", "a", "dict"])
    assert path.read_bytes() == before
    assert cache.get("bad") is None


def test_clear(path):
    cache = TuningCache(path)
    for key in "abc":
        cache.put(key, RECORD)
    other = TuningCache(path)
    assert len(other) == 3
    cache.clear()
    assert len(cache) == 0 and len(other) == 0 and other.get("a") is None


def test_directory_is_created_on_demand(tmp_path, no_warnings):
    path = tmp_path / "not" / "yet" / "there" / "tuning.json"
    cache = TuningCache(path)
    assert cache.get("k") is None and not path.parent.exists()  # reads create nothing
    cache.put("k", RECORD)
    assert TuningCache(path).get("k") == RECORD


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVENGINE_CACHE_DIR", str(tmp_path / "cachedir"))
    assert TuningCache.default_path() == tmp_path / "cachedir" / "tuning.json"
    assert TuningCache().path == tmp_path / "cachedir" / "tuning.json"
    monkeypatch.delenv("CONVENGINE_CACHE_DIR")
    expected = Path(platformdirs.user_cache_dir("convengine", appauthor=False)) / "tuning.json"
    assert TuningCache.default_path() == expected


def test_get_rereads_only_when_the_file_changed(path, monkeypatch):
    cache = TuningCache(path)
    cache.put("a", RECORD)
    loads = []
    real_load = cache._load
    monkeypatch.setattr(cache, "_load", lambda: loads.append(1) or real_load())
    monkeypatch.setattr(cache, "_file_lock", None)  # get must not need the lock
    for _ in range(200):
        assert cache.get("a") == RECORD
    assert loads == []  # the file it wrote itself is already known
    TuningCache(path).put("b", {"backend": "direct"})
    assert cache.get("b") == {"backend": "direct"}
    assert cache.get("a") == RECORD
    assert loads == [1]


# --- LRU bound ------------------------------------------------------------------------


@pytest.fixture
def fake_clock(monkeypatch):
    ticks = itertools.count(1_000_000)
    monkeypatch.setattr(tuning_cache, "time", SimpleNamespace(time=lambda: float(next(ticks))))


def test_evicts_least_recently_used(path, fake_clock):
    cache = TuningCache(path, max_entries=3)
    for key in "abc":
        cache.put(key, {"backend": key})
    assert cache.get("a") == {"backend": "a"}  # "a" is now used more recently than "b"
    cache.put("d", {"backend": "d"})
    assert set(json.loads(path.read_text())["entries"]) == {"a", "c", "d"}
    reader = TuningCache(path, max_entries=3)
    assert reader.get("b") is None and len(reader) == 3


def test_size_stays_bounded(path, fake_clock):
    cache = TuningCache(path, max_entries=5)
    for i in range(40):
        cache.put(f"k{i}", {"i": i})
    entries = json.loads(path.read_text())["entries"]
    assert sorted(entries) == sorted(f"k{i}" for i in range(35, 40))


def test_max_entries_must_be_positive(path):
    with pytest.raises(ValueError):
        TuningCache(path, max_entries=0)


# --- corrupt and foreign files --------------------------------------------------------

_VALID = json.dumps({"format": FORMAT, "version": VERSION, "entries": {"k": {"record": RECORD, "last_used": 1.0}}})


def _doc(**changes):
    document = {"format": FORMAT, "version": VERSION, "entries": {}}
    document.update(changes)
    return json.dumps(document).encode()


UNTRUSTWORTHY = {
    "empty": (b"", "not valid JSON"),
    "not-json": (b"tuning results: im2col wins", "not valid JSON"),
    "binary": (b"\x00\xff\xfe garbage \x80", "not valid JSON"),
    "truncated": (_VALID[: len(_VALID) // 2].encode(), "not valid JSON"),
    "deeply-nested": (b"[" * 100_000, "not valid JSON"),
    "json-list": (b"[1, 2, 3]", "not a convengine-tuning-cache file"),
    "foreign-format": (_doc(format="someone-elses-cache"), "not a convengine-tuning-cache file"),
    "no-marker": (b'{"entries": {}}', "not a convengine-tuning-cache file"),
    "future-version": (_doc(version=2), "unsupported version 2"),
    "entries-not-object": (_doc(entries=[]), "'entries' is not an object"),
    "record-not-object": (_doc(entries={"k": {"record": "im2col", "last_used": 1.0}}), "entry 'k' is malformed"),
    "bad-last-used": (_doc(entries={"k": {"record": {}, "last_used": "yesterday"}}), "entry 'k' is malformed"),
    "entry-missing-fields": (_doc(entries={"k": {}}), "entry 'k' is malformed"),
}


@pytest.mark.parametrize("content, problem", UNTRUSTWORTHY.values(), ids=UNTRUSTWORTHY.keys())
def test_untrustworthy_file_is_ignored_then_moved_aside(path, content, problem):
    path.write_bytes(content)
    cache = TuningCache(path)
    with pytest.warns(TuningCacheWarning, match=f"{re.escape(str(path))}.*{re.escape(problem)}"):
        assert cache.get("k") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningCacheWarning)  # once is enough
        assert len(cache) == 0
        cache.put("k", RECORD)
        assert path.with_name("tuning.json.corrupt").read_bytes() == content
        assert TuningCache(path).get("k") == RECORD


def test_put_alone_moves_a_corrupt_file_aside(path):
    path.write_bytes(b"{truncated")
    with pytest.warns(TuningCacheWarning, match="not valid JSON"):
        TuningCache(path).put("k", RECORD)
    assert path.with_name("tuning.json.corrupt").read_bytes() == b"{truncated"
    assert TuningCache(path).get("k") == RECORD


# --- unwritable locations -------------------------------------------------------------


@pytest.fixture(params=["read-only-directory", "parent-is-a-file"])
def unwritable_path(request, tmp_path):
    if request.param == "parent-is-a-file":
        (tmp_path / "file").write_text("")
        yield tmp_path / "file" / "cache" / "tuning.json"
        return
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        if os.access(directory, os.W_OK):
            pytest.skip("chmod does not stop this user (root?) from writing")
        yield directory / "tuning.json"
    finally:
        directory.chmod(0o700)


def test_unwritable_location_falls_back_to_memory(unwritable_path):
    cache = TuningCache(unwritable_path)
    with pytest.warns(TuningCacheWarning, match=f"cannot write tuning cache {re.escape(str(unwritable_path))}"):
        cache.put("a", RECORD)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningCacheWarning)  # warned once, not per put
        cache.put("b", {"backend": "direct"})
        assert cache.get("a") == RECORD and cache.get("b") == {"backend": "direct"}
        assert len(cache) == 2
        cache.clear()
        assert len(cache) == 0
    assert not unwritable_path.exists()


def test_read_only_directory_keeps_existing_entries_readable(tmp_path):
    directory = tmp_path / "shared"
    TuningCache(directory / "tuning.json").put("old", RECORD)
    directory.chmod(0o500)
    try:
        if os.access(directory, os.W_OK):
            pytest.skip("chmod does not stop this user (root?) from writing")
        cache = TuningCache(directory / "tuning.json", max_entries=2)
        assert cache.get("old") == RECORD
        with pytest.warns(TuningCacheWarning, match="kept in memory"):
            cache.put("new", {"backend": "direct"})
        assert cache.get("old") == RECORD and cache.get("new") == {"backend": "direct"}
    finally:
        directory.chmod(0o700)


# --- concurrency ----------------------------------------------------------------------


def _put_many(path, worker, count, start):
    start.wait()
    cache = TuningCache(path)
    for i in range(count):
        cache.put(f"worker{worker}-key{i}", {"backend": "direct", "worker": worker, "i": i})


def test_concurrent_processes_lose_nothing(path, no_warnings):
    workers, count = 4, 50
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    processes = [context.Process(target=_put_many, args=(str(path), w, count, start)) for w in range(workers)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * workers
    cache = TuningCache(path)
    assert len(cache) == workers * count
    for w in range(workers):
        for i in range(count):
            assert cache.get(f"worker{w}-key{i}") == {"backend": "direct", "worker": w, "i": i}
    assert _temp_files(path.parent) == []


def test_concurrent_threads_lose_nothing(path):
    cache = TuningCache(path)

    def work(worker):
        for i in range(20):
            cache.put(f"t{worker}-{i}", {"i": i})
            assert cache.get(f"t{worker}-{i}") == {"i": i}

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert len(TuningCache(path)) == 160


# --- writers killed mid-write ---------------------------------------------------------


def _start_child(script, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout.readline().strip() == "ready", "child failed before it began writing"
    return child


def _kill(child):
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()


_HANG_BEFORE_REPLACE = """
    import sys, time
    from convengine.core import tuning_cache

    def hang(fd):  # the temp file is written, the lock is held, os.replace has not run
        print("ready", flush=True)
        time.sleep(60)

    tuning_cache.os.fsync = hang
    tuning_cache.TuningCache(sys.argv[1]).put("doomed", {"backend": "never"})
"""


def test_writer_killed_before_replace_leaves_the_cache_intact(path, no_warnings):
    TuningCache(path).put("kept", RECORD)
    before = path.read_bytes()
    _kill(_start_child(_HANG_BEFORE_REPLACE, path))

    assert path.read_bytes() == before
    leftovers = _temp_files(path.parent)
    assert len(leftovers) == 1  # the killed writer's partial output ...
    cache = TuningCache(path)
    assert cache.get("kept") == RECORD and cache.get("doomed") is None  # ... is never read

    cache.put("after", {"backend": "direct"})  # the dead writer's lock was released
    assert _temp_files(path.parent) == leftovers  # recent: might be a live writer's, kept
    old = time.time() - tuning_cache.STALE_TEMP_AGE - 60
    os.utime(leftovers[0], (old, old))
    cache.put("later", {"backend": "direct"})
    assert _temp_files(path.parent) == []
    reader = TuningCache(path)
    assert all(reader.get(key) is not None for key in ("kept", "after", "later"))


_WRITE_FOREVER = """
    import sys
    from convengine.core.tuning_cache import TuningCache

    cache = TuningCache(sys.argv[1], max_entries=100_000)
    for i in range(10**9):
        cache.put(f"key{i}", {"backend": "direct", "padding": "x" * 2000})
        if i == 5:
            print("ready", flush=True)
"""


def test_writer_killed_at_a_random_moment_leaves_a_valid_cache(path, no_warnings):
    child = _start_child(_WRITE_FOREVER, path)
    time.sleep(0.3)
    _kill(child)
    cache = TuningCache(path)
    written = len(cache)
    assert written >= 6
    assert all(cache.get(f"key{i}") is not None for i in range(written))  # a consistent prefix
    cache.put("after", RECORD)
    assert TuningCache(path).get("after") == RECORD
