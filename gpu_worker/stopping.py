"""Stop requests: SIGTERM/SIGINT set a flag that training checks at batch boundaries.

SageMaker sends SIGTERM when a job is stopped or a Spot instance is reclaimed; stopping at a
boundary lets the trainer write a consistent checkpoint before the job exits non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

from saeflow.core.errors import TrainingFailed

logger = logging.getLogger(__name__)


class TrainingInterrupted(TrainingFailed):
    """SIGTERM/SIGINT stopped training; a checkpoint was written where there was one to write."""


class StopFlag:
    """Set by SIGTERM/SIGINT; checked at batch boundaries, where stopping is safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def set(self, signal_name: str) -> None:
        self.signal_name = signal_name
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGTERM/SIGINT to ``flag`` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        logger.warning("received %s: stopping at the next batch boundary", name)
        flag.set(name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
