"""The emulated clock: emulated seconds = real seconds x `time_scale` (+ manual advances).

Job states are computed from it lazily on each read, so no background thread is needed: at
time scale 3600 an emulated hour of processing passes in one real second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class EmulatedClock:
    def __init__(self, time_scale: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.time_scale = time_scale
        self._monotonic = monotonic
        self._start = monotonic()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Emulated seconds since the emulator started."""
        return (self._monotonic() - self._start) * self.time_scale + self._offset

    def advance(self, seconds: float) -> float:
        """Jump the emulated clock forward (tests of retention and slow jobs); returns `now()`."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()
