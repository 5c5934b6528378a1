"""The source fingerprint: equal for an identical tree, changed by any edit, added or removed .py file of the
fingerprinted packages, and blind to bytecode caches and other files."""
import shutil
from pathlib import Path

import pytest

from components.code_version import PROJECT_ROOT, SOURCE_PACKAGES, code_fingerprint, git_commit


def copy_tree(dst: Path) -> Path:
    """This checkout's fingerprinted packages copied to `dst` (a fresh root)."""
    for pkg in SOURCE_PACKAGES:
        shutil.copytree(PROJECT_ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_fingerprint_follows_every_source_edit_and_nothing_else(tmp_path):
    ours = code_fingerprint()
    assert len(ours) == 12 and code_fingerprint(copy_tree(tmp_path / "same")) == ours

    edited = copy_tree(tmp_path / "edited")
    loss = edited / "components" / "hml" / "plugins.py"
    loss.write_text(loss.read_text().replace("(old[:, 1:] - new[:, self._old_in_new]).pow(2)",
                                             "(old[:, 1:] - new[:, self._old_in_new]).abs()"))
    added = copy_tree(tmp_path / "added")
    (added / "pipelines" / "extra.py").write_text("X = 1\n")
    removed = copy_tree(tmp_path / "removed")
    (removed / "components" / "optim.py").unlink()
    keys = {code_fingerprint(root) for root in (edited, added, removed)}
    assert len(keys) == 3 and ours not in keys

    noise = copy_tree(tmp_path / "noise")  # bytecode and non-source files do not count
    (noise / "components" / "__pycache__").mkdir(exist_ok=True)
    (noise / "components" / "__pycache__" / "stale.py").write_text("y = 2\n")
    (noise / "components" / "notes.txt").write_text("not code")
    assert code_fingerprint(noise) == ours


def test_a_root_without_sources_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no source files under components, pipelines"):
        code_fingerprint(tmp_path)


def test_git_commit_names_head_and_marks_a_dirty_tree(tmp_path):
    """HEAD's id (with '-dirty' once a tracked file changes); None outside a git checkout."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path / "repo"), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    assert git_commit(repo) == head and len(head) == 40
    (repo / "untracked.txt").write_text("ignored: not tracked")
    git_commit.cache_clear()
    assert git_commit(repo) == head
    (repo / "a.py").write_text("x = 2\n")
    git_commit.cache_clear()
    assert git_commit(repo) == head + "-dirty"
    assert git_commit(tmp_path) is None
