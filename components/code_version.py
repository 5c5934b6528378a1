"""Fingerprint of the project's own source code, part of every cache key: a result computed by other code
(an edited loss, a pulled fix) is recomputed instead of silently reused, even when its weights still fit."""
from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = ("components", "pipelines")  # the code that computes results (tests/benchmarks/tuning do not)


@functools.lru_cache(maxsize=8)
def code_fingerprint(root: Path = PROJECT_ROOT, packages: tuple[str, ...] = SOURCE_PACKAGES) -> str:
    """sha256 (12 hex) over the relative path and bytes of every .py file of `packages` under `root`."""
    h = hashlib.sha256()
    files = sorted(p for pkg in packages for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    if not files:
        raise FileNotFoundError(f"{root}: no source files under {', '.join(packages)} to fingerprint")
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=8)
def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """HEAD's commit id of the checkout at `root`, with '-dirty' when tracked files differ from it; None
    outside a git checkout (e.g. Ray's copy of a job's working directory) or without git."""
    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


CODE_TAG = "hmldiff.code"  # MLflow tag holding the source fingerprint


def version_tags() -> dict[str, str]:
    """MLflow tags naming the code a run was computed by: the source fingerprint (the cache keys' code part)
    and, in a git checkout, the commit (MLflow's own `mlflow.source.git.commit`, shown in its UI)."""
    commit = git_commit()
    return {CODE_TAG: code_fingerprint(), **({"mlflow.source.git.commit": commit} if commit else {})}
