"""Inference: from a request's images and target to rows, within its budget.

- :mod:`.scheduler` — ``Scheduler``, the one place that decides what runs when
- :mod:`.planner` — latency budget → exit depth, as pure functions
- :mod:`.latency` — measured latencies and their robust tails
- :mod:`.calibration` — what the latency table cannot see, learned per route
- :mod:`.batcher` — per-graph queues and the one compute worker
- :mod:`.retime` — re-timing, when idle, what a budget passed over
- :mod:`.engine` — the bundle's onnxruntime sessions
- :mod:`.decoding`, :mod:`.images` — bytes → pixels, bounded, off the event loop
"""

from service.inference.batcher import Overloaded
from service.inference.calibration import Mode
from service.inference.scheduler import Admission, Scheduler, Served

__all__ = ["Admission", "Mode", "Overloaded", "Scheduler", "Served"]
