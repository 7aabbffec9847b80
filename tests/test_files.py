"""The one atomic writer (distrib/files.py), best.pt beside last.pt, the quick exit, the one CPU count and
OMP_NUM_THREADS, the one duration."""

from __future__ import annotations

import os

import pytest

from distrib.files import atomic_file, read_json, same_bytes_atomic, write_atomic
from distrib.runtime.env import cpu_cores, omp_threads
from distrib.words import duration, flag


def test_write_atomic_writes_text_bytes_and_json_and_leaves_no_temp_file(tmp_path):
    write_atomic(str(tmp_path / "a.txt"), "hello\n")
    write_atomic(str(tmp_path / "b.bin"), b"\x00\x01")
    write_atomic(str(tmp_path / "c.json"), {"epoch": 3}, as_json=True, indent=2, fsync=True)
    write_atomic(str(tmp_path / "d.json"), [1, 2], as_json=True, hidden=True)
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.json").read_text() == '{\n  "epoch": 3\n}'
    assert read_json(str(tmp_path / "c.json")) == {"epoch": 3} and read_json(str(tmp_path / "d.json")) == [1, 2]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "c.json", "d.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    path = str(tmp_path / "outcome.json")
    write_atomic(path, {"state": "running"}, as_json=True)
    with pytest.raises(RuntimeError):
        with atomic_file(path) as fh:
            fh.write('{"state": "fin')
            raise RuntimeError("disk gone")
    assert read_json(path) == {"state": "running"} and os.listdir(tmp_path) == ["outcome.json"]


@pytest.mark.parametrize("links", [True, False])
def test_best_pt_is_last_pt_s_bytes_and_keeps_them_when_last_pt_is_saved_again(tmp_path, monkeypatch, links):
    """best.pt is a second name of last.pt (or, without hard links, a copy); the next save of last.pt (a rename
    of a new file, as every writer here does) leaves best.pt's bytes as they were."""
    last, best = str(tmp_path / "last.pt"), str(tmp_path / "best.pt")
    write_atomic(best, b"epoch 0")
    write_atomic(last, b"epoch 1")
    if not links:
        monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(PermissionError("no hard links here")))
    same_bytes_atomic(last, best)
    assert (tmp_path / "best.pt").read_bytes() == b"epoch 1"
    assert os.path.samefile(last, best) == links
    write_atomic(last, b"epoch 2")
    assert (tmp_path / "best.pt").read_bytes() == b"epoch 1" and (tmp_path / "last.pt").read_bytes() == b"epoch 2"
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]


def test_read_json_is_none_for_a_missing_or_broken_file(tmp_path):
    (tmp_path / "half.json").write_text('{"epoch": ')
    assert read_json(str(tmp_path / "missing.json")) is None and read_json(str(tmp_path / "half.json")) is None


def test_omp_threads_shares_the_cores_and_the_users_setting_wins():
    cores = cpu_cores()
    assert cores >= 1
    assert omp_threads(1, {}) == str(cores)
    assert omp_threads(cores * 4, {}) == "1"  # never 0
    assert omp_threads(2, {"OMP_NUM_THREADS": "7"}) == "7"


def test_duration_and_flag_say_it_one_way():
    assert [duration(s) for s in (40, 185, 7380)] == ["40 s", "3 min 05 s", "2 h 03 min"]
    assert flag("batch_size") == "batch-size"


def test_quick_exit_keeps_what_the_teardown_would_have_written(tmp_path):
    """A process that leaves through quick_exit (ranks, tools, the CLI after a tool, the fork server): its exit
    code, a file left open with buffered text, a thread still writing, and its atexit functions all as at a
    normal exit."""
    import subprocess
    import sys

    script = f"""
import atexit, threading, time
from distrib.runtime import quick_exit
left_open = open({str(tmp_path / "open.txt")!r}, "w")
left_open.write("buffered, never closed")
atexit.register(lambda: open({str(tmp_path / "atexit.txt")!r}, "w").write("ran"))
def late():
    time.sleep(0.5)
    open({str(tmp_path / "thread.txt")!r}, "w").write("joined")
threading.Thread(target=late).start()
quick_exit.leave(3)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert (tmp_path / "open.txt").read_text() == "buffered, never closed"
    assert (tmp_path / "atexit.txt").read_text() == "ran" and (tmp_path / "thread.txt").read_text() == "joined"
