"""Command line of one benchmark module run alone, as `make bench` runs it (full sizes unless --quick);
results printed as JSON."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence


def main(run: Callable[..., dict], description: str | None, argv: Sequence[str] | None = None) -> None:
    """Parse `--quick` / `--help`, run the benchmark, print its results."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="small sizes (as `make bench ARGS=--quick`)")
    print(json.dumps(run(quick=ap.parse_args(argv).quick), indent=1))
