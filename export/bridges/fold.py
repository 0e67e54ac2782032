"""Fold a bridge into an ONNX graph: the named embedding output becomes the bridged (searchable)
one, and the graph's own embedding stays available under the raw name, as a last output.

    raw ─ MatMul(W) ─ Add(b) ─ x / max(‖x‖₂, 1e-12) ─▶ embedding       (W [D, D'] or [L, D, D'])

The nodes and initialisers added carry the ``bridge_`` prefix, so a bridged graph can be
un-bridged exactly (``unfold``) and bridged again (a re-fit, another gallery depth).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PREFIX = "bridge_"
EPS = 1e-12  # F.normalize's


def raw_name(output: str) -> str:
    """The name the graph's own (un-bridged) output keeps: ``raw_embedding``, ``raw_embeddings``."""
    return f"raw_{output}"


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in graph.output:
        if value.name == old:
            value.name = new


def is_bridged(model: onnx.ModelProto, output: str) -> bool:
    return any(v.name == raw_name(output) for v in model.graph.output)


def unfold(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """The graph as exported, before any bridge was folded into ``output`` (a copy)."""
    model = _copy(model)
    if not is_bridged(model, output):
        return model
    g = model.graph
    index = [v.name for v in g.output].index(output)
    kept_nodes = [n for n in g.node if not n.name.startswith(PREFIX)]
    del g.node[:]
    g.node.extend(kept_nodes)
    kept_init = [t for t in g.initializer if not t.name.startswith(PREFIX)]
    del g.initializer[:]
    g.initializer.extend(kept_init)
    raw = _value(next(v for v in g.output if v.name == raw_name(output)))
    outputs = [_value(v) for v in g.output if v.name not in (output, raw.name)]
    raw.name = output
    outputs.insert(index, raw)
    del g.output[:]
    g.output.extend(outputs)
    _rename(g, raw_name(output), output)
    return model


def fold(
    model: onnx.ModelProto, output: str, weight: np.ndarray, bias: np.ndarray
) -> onnx.ModelProto:
    """A copy of ``model`` whose ``output`` is ``normalise(raw @ weight + bias)``; ``raw_<output>``
    is appended as the last output. Any bridge already folded is replaced."""
    model = unfold(model, output)
    g = model.graph
    names = [v.name for v in g.output]
    if output not in names:
        raise ValueError(f"graph has no output {output!r} (outputs: {', '.join(names)})")
    index = names.index(output)
    raw = raw_name(output)
    _rename(g, output, raw)
    g.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(weight, np.float32), PREFIX + "weight"),
            numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), PREFIX + "bias"),
            numpy_helper.from_array(np.array(EPS, np.float32), PREFIX + "eps"),
        ]
    )
    n = PREFIX
    nodes = [
        helper.make_node("MatMul", [raw, n + "weight"], [n + "mapped"], name=n + "matmul"),
        helper.make_node("Add", [n + "mapped", n + "bias"], [n + "shifted"], name=n + "add"),
    ]
    if _opset(model) >= 18:
        g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), n + "axes"))
        nodes.append(
            helper.make_node(
                "ReduceL2", [n + "shifted", n + "axes"], [n + "norm"], name=n + "norm", keepdims=1
            )
        )
    else:
        nodes.append(
            helper.make_node(
                "ReduceL2", [n + "shifted"], [n + "norm"], name=n + "norm", axes=[-1], keepdims=1
            )
        )
    nodes += [
        helper.make_node("Max", [n + "norm", n + "eps"], [n + "clamped"], name=n + "clamp"),
        helper.make_node("Div", [n + "shifted", n + "clamped"], [output], name=n + "div"),
    ]
    g.node.extend(nodes)
    raw_info = _value(next(v for v in g.output if v.name == raw))
    bridged = _value(raw_info)
    bridged.name = output
    if bridged.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"{output} is not float32; a bridge maps float32 embeddings")
    dims = bridged.type.tensor_type.shape.dim
    dims[len(dims) - 1].Clear()
    dims[len(dims) - 1].dim_value = int(weight.shape[-1])
    outputs = [_value(v) for v in g.output if v.name != raw]
    outputs.insert(index, bridged)
    outputs.append(raw_info)
    del g.output[:]
    g.output.extend(outputs)
    onnx.checker.check_model(model, full_check=True)
    return model


def _value(info: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(info)
    return out


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
