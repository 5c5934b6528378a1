"""How every CLI ends: a bad input prints one `error:` line on stderr and exits 2; success exits 0."""
from __future__ import annotations

import sys
from collections.abc import Callable

from components.errors import InputError


def exit_code(action: Callable[[], object]) -> int:
    """Run `action`; 0 on success, 2 (with the error's one-line message) on an InputError."""
    try:
        action()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
