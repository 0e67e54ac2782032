"""One copy of a bundle's weights: every graph's large initializers move to ``weights.bin``,
stored once however many graphs use them (ONNX external data with offsets).

An exit graph at depth d carries blocks 1..d, the all-exits graph all L, and each segment one:
stored inline that is about 2.5 L copies of the model. Identical tensors — the same block's
weights in exit_05, exit_12, all_exits and segment_04_05 — are found by their bytes, so the rule
needs no knowledge of which parameter a tensor came from. Tensors whose float32 values float16
holds exactly (a checkpoint saved in fp16) are stored as float16 and cast back inside the graph.
onnxruntime reads the offsets relative to the graph's folder; the graphs stay small protobufs
whose sha256 the manifest pins, and ``weights.bin``'s own sha256 is pinned beside them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
from onnx import numpy_helper

from export.errors import ExportError
from export.manifest import (
    INPUT_NAME,
    WEIGHTS_FILE,
    AllExitsEntry,
    ExitEntry,
    SegmentEntry,
    WeightsEntry,
    file_sha256,
)
from export.parity import onnx_session

_Entry = TypeVar("_Entry", ExitEntry, AllExitsEntry, SegmentEntry)
INLINE_BYTES = 1024  # smaller tensors (norm scales, biases of small layers) stay in the graph
F16_SUFFIX = ".f16"  # a float32 initializer stored as float16 (see _fp16_exact)
ALIGN = 64  # offsets aligned for vector loads (onnxruntime reads them; it maps only pages)


def share_weights(bundle: Path, graphs: Sequence[str]) -> WeightsEntry:
    """Move the large initializers of ``graphs`` (files in ``bundle``) into one ``weights.bin``,
    each distinct tensor once; rewrite the graphs in place. Graphs that already read an earlier
    ``weights.bin`` (a re-bridged bundle) are read whole first: the new file replaces it last."""
    offsets: dict[bytes, tuple[int, int]] = {}
    partial = bundle / f"{WEIGHTS_FILE}.partial"
    with open(partial, "wb") as out:
        written = 0
        for name in graphs:
            model = onnx.load(str(bundle / name))  # external data, if any, read inline
            inputs = {i.name for i in model.graph.input}
            casts = []
            for tensor in model.graph.initializer:
                array = numpy_helper.to_array(tensor)
                if array.nbytes < INLINE_BYTES:
                    continue
                if tensor.name not in inputs and _fp16_exact(array):
                    casts.append(_cast_node(tensor.name))
                    tensor.name, array = f"{tensor.name}{F16_SUFFIX}", array.astype(np.float16)
                data = np.ascontiguousarray(array).tobytes()
                key = hashlib.sha256(f"{array.dtype}{array.shape}".encode() + data).digest()
                if key not in offsets:
                    pad = -written % ALIGN
                    out.write(b"\0" * pad)
                    offsets[key] = (written + pad, len(data))
                    out.write(data)
                    written += pad + len(data)
                _point_at(tensor, array, *offsets[key])
            for node in reversed(casts):  # first, so every use comes after its cast
                model.graph.node.insert(0, node)
            onnx.save(model, str(bundle / f"{name}.partial"))
        out.flush()
    for name in graphs:
        (bundle / f"{name}.partial").replace(bundle / name)
    partial.replace(bundle / WEIGHTS_FILE)
    return WeightsEntry(file=WEIGHTS_FILE, sha256=file_sha256(bundle / WEIGHTS_FILE), bytes=written)


def _fp16_exact(array: np.ndarray) -> bool:
    """float32 values that float16 holds exactly (a checkpoint saved in fp16, as the default
    model is): stored at half the size, cast back in the graph, bit for bit the same."""
    return array.dtype == np.float32 and np.array_equal(
        array.astype(np.float16).astype(np.float32), array
    )


def _cast_node(name: str) -> onnx.NodeProto:
    """``name`` (float32) computed from its stored float16 copy; onnxruntime folds it at load."""
    return onnx.helper.make_node(
        "Cast", [f"{name}{F16_SUFFIX}"], [name], to=onnx.TensorProto.FLOAT, name=f"{name}.cast"
    )


def _point_at(tensor: onnx.TensorProto, array: np.ndarray, offset: int, length: int) -> None:
    """Make ``tensor`` read ``length`` bytes at ``offset`` of the weights file."""
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))  # raw_data form, then cleared
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", WEIGHTS_FILE), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


def external_locations(graph: Path) -> set[str]:
    """The files a graph's initializers read from (empty when all its data is inline)."""
    model = onnx.load(str(graph), load_external_data=False)
    return {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def share_bundle_weights(
    bundle: Path,
    exits: list[ExitEntry],
    all_exits: AllExitsEntry,
    segments: list[SegmentEntry],
    images: np.ndarray,
) -> tuple[list[ExitEntry], AllExitsEntry, list[SegmentEntry], WeightsEntry]:
    """:func:`share_weights` over every graph of a bundle being assembled; the graphs that take
    images must answer ``images`` exactly as before. Returns the entries with their new sha256."""
    before = {e.file: onnx_session(bundle / e.file).run(None, {INPUT_NAME: images}) for e in exits}
    files = [e.file for e in exits] + [all_exits.file] + [s.file for s in segments]
    weights = share_weights(bundle, files)
    for e in exits:
        after = onnx_session(bundle / e.file).run(None, {INPUT_NAME: images})
        if not all(np.array_equal(a, b) for a, b in zip(before[e.file], after, strict=True)):
            raise ExportError(f"{e.file} answers differently with shared weights")

    def rehash(entry: _Entry) -> _Entry:
        return entry.model_copy(update={"sha256": file_sha256(bundle / entry.file)})

    return [rehash(e) for e in exits], rehash(all_exits), [rehash(s) for s in segments], weights
