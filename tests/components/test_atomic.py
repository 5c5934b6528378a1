"""Atomic writes leave either the old complete file or the new one, never a partial file."""
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from components.atomic import atomic_dir, atomic_path, ensure_writable_dir, write_json, write_text
from components.errors import InputError


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_replaces_whole(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as t:
        (t / "a").write_text("1")
    with pytest.raises(ValueError), atomic_dir(target) as t:
        (t / "b").write_text("2")
        raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_unwritable_dir_is_clear_error(tmp_path):
    """A directory the user may read but not write. Root may write anywhere, so as root (CI) the check runs
    in a child process that first becomes the unprivileged user `nobody`."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(InputError, match="not writable"):
            ensure_writable_dir(ro)
        return
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is root-only (0700): nobody cannot enter it
    try:
        base.chmod(0o755)
        (base / "ro").mkdir(mode=0o555)
        child = ("import os, sys\n"  # imports first: the interpreter's stdlib may be readable by root only
                 "from components.atomic import ensure_writable_dir\n"
                 "from components.errors import InputError\n"
                 "os.setgid(65534); os.setuid(65534)\n"
                 "try:\n    ensure_writable_dir(sys.argv[1])\nexcept InputError as e:\n    print(e)\n")
        out = subprocess.run([sys.executable, "-c", child, str(base / "ro")], capture_output=True, text=True, check=False,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "not writable" in out.stdout and str(base / "ro") in out.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_output_path_under_a_file_is_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="cannot create output directory"):
        write_json(f / "sub" / "x.json", {})


def test_written_files_and_dirs_follow_the_umask(tmp_path):
    """Atomic outputs get the permissions a plain open()/mkdir would give (mkstemp/mkdtemp alone give
    0600/0700, which hides results from a group sharing a run directory)."""
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
