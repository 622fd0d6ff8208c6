"""Keep stdout for our results while ultralytics runs.

ultralytics logs through a ``logging.StreamHandler`` bound to ``sys.stdout`` when it is first
imported, and prints progress bars with ``print``; :func:`stdout_to_stderr` sends both to
stderr for the duration, so ``cv-autolabel train --json`` or ``export --json`` can be piped.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send ultralytics' log and anything printed to stderr; restore both afterwards."""
    import ultralytics  # noqa: F401, PLC0415  (its logger must exist before it is moved)

    moved = [(h, h.stream) for h in logging.getLogger("ultralytics").handlers
             if isinstance(h, logging.StreamHandler)
             and h.stream in (sys.stdout, sys.__stdout__)]  # __stdout__: inside a redirect
    for handler, _ in moved:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)
