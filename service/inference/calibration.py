"""What the latency table cannot see, learned from every answered request.

``COMPONENTS`` (the default) keeps one window per unknown part of a request's time: the error
of the wait predictions (all routes share the batcher) and, per route, the time from a batch's
end to the response being ready. ``GLOBAL`` is the previous planner's rule, kept so benchmarks
can put the two side by side: one window of whole-request errors whose 99th percentile pads
every prediction.
"""

from __future__ import annotations

import enum
import threading
from collections import deque

import numpy as np

from service.inference.latency import Window
from service.inference.planner import Pads

GLOBAL_WINDOW, GLOBAL_QUANTILE = 512, 99.0  # the previous planner's numbers


class Mode(enum.Enum):
    COMPONENTS = "components"
    GLOBAL = "global"


class Calibration:
    def __init__(self, mode: Mode = Mode.COMPONENTS) -> None:
        self.mode = mode
        self._wait = Window()
        self._after: dict[str, Window] = {}
        self._whole: deque[float] = deque(maxlen=GLOBAL_WINDOW)
        self._whole_pad, self._seen = 0.0, 0
        self._lock = threading.Lock()

    def pads(self, route: str) -> Pads:
        with self._lock:
            if self.mode is Mode.GLOBAL:
                return Pads(whole_ms=self._whole_pad)
            after = self._after.get(route)
            return Pads(wait_ms=max(0.0, self._wait.tail), after_ms=after.tail if after else 0.0)

    def observe(
        self,
        route: str,
        *,
        wait_error_ms: float,
        after_ms: float,
        whole_error_ms: float,
    ) -> None:
        """One answered request: its wait's prediction error, its after-compute time, and its
        whole elapsed time minus the uncalibrated prediction."""
        with self._lock:
            self._wait.add(wait_error_ms)
            self._after.setdefault(route, Window()).add(after_ms)
            self._whole.append(whole_error_ms)
            self._seen += 1
            if self._seen < 8 or self._seen % 8 == 0:  # the previous rule's refresh
                q = float(np.percentile(self._whole, GLOBAL_QUANTILE))
                self._whole_pad = max(0.0, q)

    def reset(self) -> None:
        """Forget everything (after the warm-up requests, which ran cold paths)."""
        with self._lock:
            self._wait.clear()
            self._after.clear()
            self._whole.clear()
            self._whole_pad, self._seen = 0.0, 0
