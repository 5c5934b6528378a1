"""How every CLI ends: a bad input prints one `error:` line on stderr and exits 2; success exits 0."""
from __future__ import annotations

import sys
from collections.abc import Callable

from components.errors import InputError


def exit_code(action: Callable[[], object]) -> int:
    """Run `action`; 0 on success, 2 (with the error's one-line message) on an InputError. An InputError raised
    in a Ray task or actor arrives as Ray's error posing as it (an instance of its class whose text is the
    remote traceback); its `cause` is the error itself, whose one line is printed."""
    try:
        action()
    except InputError as e:
        cause = getattr(e, "cause", None)
        print(f"error: {cause if isinstance(cause, InputError) else e}", file=sys.stderr)
        return 2
    return 0
