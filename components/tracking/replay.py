"""Deliver an MLflow fallback file (records buffered while the backend was unreachable)."""
from __future__ import annotations

import argparse
import sys

from components.errors import InputError
from components.tracking.tracker import Tracker


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m components.tracking.replay FALLBACK.jsonl --tracking-uri URI."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("fallback", help="the mlflow_fallback.jsonl file of a run directory")
    ap.add_argument("--tracking-uri", required=True, help="where to deliver (sqlite:///... or http://...)")
    args = ap.parse_args(argv)
    try:
        tracker = Tracker(args.tracking_uri, "replayed", args.fallback, retry_seconds=0.0)
        if not tracker.status().pending:
            raise InputError(args.fallback, "holds no buffered records", "a non-empty fallback JSONL file")
        st = tracker.flush()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(st.summary())
    return 0 if not st.pending else 1


if __name__ == "__main__":
    sys.exit(main())
