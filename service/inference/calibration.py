"""What the latency table cannot see, learned from every answered request.

``COMPONENTS`` (the default): when a depth is chosen, the time already spent is known exactly;
what remains is the wait for the batch, its compute and the response (copying rows, a FAISS
search, encoding, and the event loop's other work meanwhile). The raw prediction of that
remainder is the queue ahead plus the graph's *median* batch time; its error is learned per route
and per load — the number of inference requests in flight (1, 2, 3–4, 5–8, …), because under
load the event loop's share of a request grows — and the robust p99 of that error is added.
One window per (route, load) keeps the pad small when the server is idle and honest when it is
busy; the robust tail keeps one stalled request from raising it.

``GLOBAL`` is the previous planner's rule, kept so the benchmarks can put the two side by side:
compute at its p99 and one pad for everything, the 99th percentile of the last 512 whole-request
errors.
"""

from __future__ import annotations

import enum
import threading
from collections import deque

import numpy as np

from service.inference.latency import Window
from service.inference.planner import Pads

GLOBAL_WINDOW, GLOBAL_QUANTILE = 512, 99.0  # the previous planner's numbers
MIN_SAMPLES = 8  # a (route, load) window with fewer borrows the route's window over all loads


class Mode(enum.Enum):
    COMPONENTS = "components"
    GLOBAL = "global"


def load_bucket(in_flight: int) -> int:
    """0 for 1 request in flight, 1 for 2, 2 for 3–4, 3 for 5–8, …"""
    return max(0, in_flight - 1).bit_length()


class Calibration:
    def __init__(self, mode: Mode = Mode.COMPONENTS) -> None:
        self.mode = mode
        self._by_load: dict[tuple[str, int], Window] = {}
        self._by_route: dict[str, Window] = {}
        self._whole: deque[float] = deque(maxlen=GLOBAL_WINDOW)
        self._whole_pad, self._seen = 0.0, 0
        self._lock = threading.Lock()

    def pads(self, route: str, in_flight: int) -> Pads:
        with self._lock:
            if self.mode is Mode.GLOBAL:
                return Pads(whole_ms=self._whole_pad, compute_tail=True)
            window = self._by_load.get((route, load_bucket(in_flight)))
            if window is None or len(window) < MIN_SAMPLES:
                window = self._by_route.get(route)
            return Pads(remaining_ms=max(0.0, window.tail) if window else 0.0)

    def observe(
        self, route: str, *, in_flight: int, remaining_error_ms: float, whole_error_ms: float
    ) -> None:
        """One answered request: the error of its raw remaining-time prediction (made with
        ``in_flight`` inference requests in flight) and of its whole raw prediction."""
        with self._lock:
            self._by_load.setdefault((route, load_bucket(in_flight)), Window()).add(
                remaining_error_ms
            )
            self._by_route.setdefault(route, Window()).add(remaining_error_ms)
            self._whole.append(whole_error_ms)
            self._seen += 1
            if self.mode is Mode.GLOBAL and (self._seen < 8 or self._seen % 8 == 0):
                q = float(np.percentile(self._whole, GLOBAL_QUANTILE))
                self._whole_pad = max(0.0, q)

    def report(self) -> dict[str, object]:
        """The pads now, for /v1/model: per route and load bucket."""
        with self._lock:
            if self.mode is Mode.GLOBAL:
                return {"mode": self.mode.value, "whole_ms": round(self._whole_pad, 3)}
            rows = [
                {"route": r, "in_flight": f"{(1 << b >> 1) + 1}-{1 << b}" if b else "1",
                 "remaining_ms": round(w.tail, 3), "samples": len(w)}
                for (r, b), w in sorted(self._by_load.items())
            ]  # fmt: skip
            return {"mode": self.mode.value, "pads": rows}

    def reset(self) -> None:
        """Forget everything (after the warm-up requests, which ran cold paths)."""
        with self._lock:
            self._by_load.clear()
            self._by_route.clear()
            self._whole.clear()
            self._whole_pad, self._seen = 0.0, 0
