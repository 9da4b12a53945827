"""How much Keras prints while fitting: a progress bar only where someone watches a terminal;
one line per epoch in logs, CI output and notebook cells (no per-step bars flooding them)."""

from __future__ import annotations

import sys
from typing import TextIO

PROGRESS_BAR = 1
ONE_LINE_PER_EPOCH = 2


def keras_verbosity(stream: TextIO | None = None) -> int:
    """Keras `verbose=`: 1 on a terminal, else 2."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return PROGRESS_BAR if callable(isatty) and isatty() else ONE_LINE_PER_EPOCH
