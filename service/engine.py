"""onnxruntime sessions: one per exit depth plus the all-exits graph, CUDA first when allowed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.manifest import ALL_EXITS_OUTPUT, EXIT_OUTPUT, INPUT_NAME, Manifest

log = logging.getLogger(__name__)
ALL_EXITS = 0  # the key of the all-exits session beside exit depths 1..L


def choose_providers(device: str) -> list[str]:
    """CUDA EP first when onnxruntime reports it and the device setting allows, else CPU."""
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from NVIDIA's pip wheels (GPU image)
            try:
                ort.preload_dlls()
            except Exception as exc:  # system CUDA libraries may still be found
                log.warning("onnxruntime.preload_dlls failed: %s", exc)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError(f"device=cuda but onnxruntime offers only {available}")
    return ["CPUExecutionProvider"]


def default_threads() -> int:
    """All cores but one: the event loop parses and answers HTTP while a batch computes."""
    return max(1, (os.cpu_count() or 1) - 1)


class Engine:
    """Runs a bundle's graphs. ``run`` is blocking: call it off the event loop."""

    def __init__(self, bundle: Path, manifest: Manifest, device: str, threads: int = 0):
        self.manifest = manifest
        self.providers = choose_providers(device)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # No busy-waiting between batches: the event loop needs those cores for HTTP work.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions: dict[int, ort.InferenceSession] = {}
        for entry in manifest.exits:
            self.sessions[entry.exit_depth] = ort.InferenceSession(
                str(bundle / entry.file), opts, providers=self.providers
            )
        self.sessions[ALL_EXITS] = ort.InferenceSession(
            str(bundle / manifest.all_exits.file), opts, providers=self.providers
        )
        used = self.sessions[ALL_EXITS].get_providers()
        self.device = "cuda" if "CUDAExecutionProvider" in used else "cpu"
        log.info("engine: %d exit graphs + all_exits on %s", len(manifest.exits), used)

    @property
    def exit_depths(self) -> list[int]:
        return self.manifest.exit_depths

    def run(self, exit_depth: int, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, S, S, 3]`` → ``[N, D]`` at an exit depth, or ``[L, N, D]`` for ALL_EXITS."""
        name = ALL_EXITS_OUTPUT if exit_depth == ALL_EXITS else EXIT_OUTPUT
        return self.sessions[exit_depth].run([name], {INPUT_NAME: images})[0]
