"""simrec's progress bars (tqdm) on long work, with one switch that hides them all: a step run
in the background beside another step's bar (`simrec.background`) must not draw over it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

_bars_shown = True


def progress(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm:
    """`tqdm(iterable, **options)`, disabled while bars are hidden in this process."""
    if not _bars_shown:
        options["disable"] = True
    return tqdm(iterable, **options)


def hide_progress_bars() -> None:
    """No simrec progress bar is drawn in this process from now on (log lines still are)."""
    global _bars_shown
    _bars_shown = False
