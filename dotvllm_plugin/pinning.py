"""A per-thread switch for memo tables that keep some entries for the process's life.

Memo tables of pure functions (run tables, a character class's byte trie) are emptied by cold
benchmarks; what a compiler builds when it is made (the same for every schema) is *pinned* instead:
made while the switch is on, kept past those clears.
"""

from __future__ import annotations

import contextlib
import threading

__all__ = ["Pinning"]


class Pinning:
    """``with pinning.on():`` marks what the memo tables consulting :attr:`active` make meanwhile
    (in this thread) as pinned."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def active(self) -> bool:
        return getattr(self._local, "on", False)

    @contextlib.contextmanager
    def on(self):
        was = self.active
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = was
