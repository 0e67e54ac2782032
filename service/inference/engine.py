"""onnxruntime sessions: one per exit depth plus the all-exits graph, CUDA first when allowed.

The device never lies: onnxruntime quietly builds a session on the CPU when its CUDA provider
is listed but cannot load (a driver too old, a library missing), so the providers each session
*actually* got are checked. ``device=cuda`` and any session without CUDA is a
:class:`DeviceUnavailable` (the server refuses to start); ``auto`` then serves on the CPU with a
warning.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.manifest import (
    ALL_EXITS_OUTPUT,
    EXIT_OUTPUT,
    INPUT_NAME,
    RAW_ALL_EXITS_OUTPUT,
    RAW_EXIT_OUTPUT,
    SEGMENT_INPUT,
    SEGMENT_OUTPUT,
    Manifest,
    exit_row,
    gallery_depth,
)
from service.errors import Refusal

log = logging.getLogger(__name__)


class Graph(enum.Enum):
    """A graph that is not one exit depth's."""

    ALL_EXITS = "all_exits"


@dataclass(frozen=True)
class Segment:
    """The segment graph that ends at exit depth ``last`` (blocks first+1..last)."""

    last: int


ALL_EXITS = Graph.ALL_EXITS
GraphKey = int | Graph | Segment  # an exit depth 1..L, the all-exits graph, or a segment


CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class DeviceUnavailable(Refusal):
    """``device=cuda`` was asked for and onnxruntime cannot run every graph on CUDA."""


def choose_providers(device: str) -> list[str]:
    """CUDA EP first when onnxruntime reports it and the device setting allows, else CPU."""
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and CUDA in available:
        if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from NVIDIA's pip wheels (GPU image)
            try:
                ort.preload_dlls()
            except Exception as exc:  # system CUDA libraries may still be found
                log.warning("onnxruntime.preload_dlls failed: %s", exc)
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceUnavailable(
            f"SDSSL_DEVICE=cuda, but this onnxruntime has no CUDA provider (it offers "
            f"{', '.join(available)}): install onnxruntime-gpu, or use SDSSL_DEVICE=auto|cpu"
        )
    return [CPU]


def gallery_graph(manifest: Manifest) -> GraphKey:
    """The graph that embeds items: the gallery depth's exit graph, or the all-exits graph when
    the bundle was exported without that exit (then :func:`gallery_rows` picks its row)."""
    d = gallery_depth(manifest)
    return d if d in manifest.exit_depths else ALL_EXITS


def gallery_rows(manifest: Manifest, output: np.ndarray) -> np.ndarray:
    """``[N, D]`` gallery vectors from :func:`gallery_graph`'s output."""
    return output if output.ndim == 2 else exit_row(output, gallery_depth(manifest))


def graph_files(manifest: Manifest) -> dict[GraphKey, str]:
    """Session key (an exit depth, ALL_EXITS, a Segment) → the graph's file in the bundle."""
    files: dict[GraphKey, str] = {e.exit_depth: e.file for e in manifest.exits}
    files[ALL_EXITS] = manifest.all_exits.file
    return files | {Segment(s.last): s.file for s in manifest.segments}


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
        files = graph_files(manifest)

        def open_sessions() -> dict[GraphKey, ort.InferenceSession]:
            return {
                k: ort.InferenceSession(str(bundle / name), opts, providers=self.providers)
                for k, name in files.items()
            }

        self.sessions = open_sessions()
        on_cpu = [files[k] for k, s in self.sessions.items() if CUDA not in s.get_providers()]
        if CUDA in self.providers and on_cpu:
            why = (
                f"onnxruntime could not start its CUDA provider for {len(on_cpu)} "
                f"of {len(files)} graphs (e.g. {on_cpu[0]}): check the NVIDIA driver (CUDA 13 "
                "needs >= 580) and that the GPU is visible in this container"
            )
            if device == "cuda":
                raise DeviceUnavailable(f"SDSSL_DEVICE=cuda, but {why}")
            log.warning("%s; serving on the CPU (SDSSL_DEVICE=auto)", why)
            self.providers = [CPU]
            self.sessions = open_sessions()  # one device for every graph
        self.device = "cuda" if CUDA in self.providers else "cpu"
        log.info("engine: %d exit graphs + all_exits on %s", len(manifest.exits), self.device)

    def session_providers(self) -> dict[str, list[str]]:
        """The providers each graph's session really runs on, by graph file."""
        files = graph_files(self.manifest)
        return {files[k]: s.get_providers() for k, s in self.sessions.items()}

    @property
    def exit_depths(self) -> list[int]:
        return self.manifest.exit_depths

    @property
    def segments(self) -> list[Segment]:
        """The bundle's segments in order (empty: it cannot be run block by block)."""
        return [Segment(s.last) for s in self.manifest.segments]

    @property
    def dim(self) -> int:
        """Width of the searchable (bridged) part of :meth:`run`'s rows; the raw part follows."""
        return self.manifest.model.dim

    def run_segment(self, segment: Segment, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (the first segment) or the hidden state → (hidden after the segment,
        ``[N, D + D]`` embeddings at its exit depth: bridged, then raw, as :meth:`run`)."""
        name = INPUT_NAME if hidden.dtype == np.uint8 else SEGMENT_INPUT
        hidden_next, embedding, raw = self.sessions[segment].run(
            [SEGMENT_OUTPUT, EXIT_OUTPUT, RAW_EXIT_OUTPUT], {name: hidden}
        )
        return hidden_next, np.concatenate([embedding, raw], axis=-1)

    def embed_gallery(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, S, S, 3]`` → ``[N, D]``: items' vectors, at the gallery depth (the
        searchable output only: reindex and rollouts need no raw rows)."""
        graph = gallery_graph(self.manifest)
        name = ALL_EXITS_OUTPUT if graph is ALL_EXITS else EXIT_OUTPUT
        rows = self.sessions[graph].run([name], {INPUT_NAME: images})[0]
        return gallery_rows(self.manifest, rows)

    def run(self, graph: GraphKey, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, S, S, 3]`` → ``[N, D + D]`` at an exit depth, ``[L, N, D + D]`` for
        ALL_EXITS: the searchable (bridged) embedding, then the exit's raw one — both outputs in
        one array, so that a batch's rows carry both to the requests that share it."""
        names = (
            [ALL_EXITS_OUTPUT, RAW_ALL_EXITS_OUTPUT]
            if graph is ALL_EXITS
            else [EXIT_OUTPUT, RAW_EXIT_OUTPUT]
        )
        return np.concatenate(self.sessions[graph].run(names, {INPUT_NAME: images}), axis=-1)
