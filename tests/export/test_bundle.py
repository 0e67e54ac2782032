"""Bundles: parity with torch at every depth, truncation, atomicity, verification."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from export.bundle import export_bundle
from export.errors import BundleError, ExportError
from export.manifest import (
    ALL_EXITS_OUTPUT,
    EXIT_OUTPUT,
    INPUT_NAME,
    MANIFEST,
    RAW_ALL_EXITS_OUTPUT,
    RAW_EXIT_OUTPUT,
    SEGMENT_INPUT,
    SEGMENT_OUTPUT,
    Manifest,
    bundle_id,
)
from export.parity import onnx_session
from export.verify import verify_bundle
from export.weights import F16_SUFFIX, external_locations
from service.inference.images import resize_center_crop
from training.augment import eval_geometry
from training.checkpoint import load_backbone
from training.data import load_splits
from training.exits import exit_embeddings


def real_images(cfg) -> np.ndarray:
    """mnist5k digits and scikit-image photos, brought to S×S by the service's own intake
    (tests/service/test_images.py proves it equals evaluation's torchvision transform)."""
    s = cfg.model.img_size
    resize = round(s / cfg.data.eval_crop_ratio)
    test = load_splits("mnist5k", 0.2).test
    imgs = [test.image(i) for i in range(0, 1000, 97)]
    imgs += [Image.fromarray(skdata.astronaut()), Image.fromarray(skdata.coffee())]
    imgs += [Image.fromarray(skdata.camera()).convert("RGB")]
    rows = [resize_center_crop(im, resize, s, cfg.data.interpolation, 10**8) for im in imgs]
    assert np.array_equal(rows[0], np.asarray(eval_geometry(s, cfg.data)(imgs[0])))
    return np.stack(rows)


def torch_reference(ckpt, images: np.ndarray) -> np.ndarray:
    backbone, cfg = load_backbone(ckpt)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return exit_embeddings(backbone, (x - mean) / std, range(1, cfg.model.depth + 1)).numpy()


def bridged_reference(path, raw: np.ndarray) -> np.ndarray:
    """The torch model's embedding mapped by the bridge a graph carries (its ``bridge_``
    initialisers): ``normalise(raw @ W + b)``, computed in torch."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    # a map float16 holds exactly (the identity at the gallery depth) is stored as float16
    init |= {k.removesuffix(F16_SUFFIX): v.astype(np.float32) for k, v in init.items()
             if k.endswith(F16_SUFFIX)}  # fmt: skip
    w, b = (torch.from_numpy(init[k].copy()) for k in ("bridge_weight", "bridge_bias"))
    return torch.nn.functional.normalize(torch.from_numpy(raw) @ w + b, dim=-1).numpy()


def close(got: np.ndarray, want: np.ndarray, precision: str) -> bool:
    if precision == "fp32":
        return bool(np.abs(got - want).max() <= 1e-4)
    return bool(cosine(got, want).min() >= 0.999)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def fp16_bundle(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("b16") / "tiny16"
    export_bundle(tiny_checkpoint, out, fp16=True, progress=False)
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_parity_at_every_depth(tiny_checkpoint, tiny_bundle, fp16_bundle, precision) -> None:
    """Every exit graph and the all-exits graph: the raw output equals the torch model's
    embedding, the bridged output equals the torch model's embedding mapped by the bridge."""
    bundle = tiny_bundle if precision == "fp32" else fp16_bundle
    _, cfg = load_backbone(tiny_checkpoint)
    rng = np.random.default_rng(1)
    s = cfg.model.img_size
    images = np.concatenate([real_images(cfg), rng.integers(0, 256, (5, s, s, 3), dtype=np.uint8)])
    ref = torch_reference(tiny_checkpoint, images)
    m = Manifest.read(bundle)
    assert m.exit_depths == [1, 2, 3, 4] and m.precision == precision
    assert m.format_version == 2 and m.bridge is not None and m.bridge.gallery_depth == 4
    all_path = bundle / m.all_exits.file
    all_out, all_raw = onnx_session(all_path).run(
        [ALL_EXITS_OUTPUT, RAW_ALL_EXITS_OUTPUT], {INPUT_NAME: images}
    )
    assert all_out.shape == all_raw.shape == (4, len(images), 32) and all_out.dtype == np.float32
    all_bridged = bridged_reference(all_path, ref)  # [L, N, D] @ [L, D, D]
    for e in m.exits:
        d = e.exit_depth
        out, raw = onnx_session(bundle / e.file).run(
            [EXIT_OUTPUT, RAW_EXIT_OUTPUT], {INPUT_NAME: images}
        )
        assert out.shape == (len(images), 32) and out.dtype == np.float32
        want = bridged_reference(bundle / e.file, ref[d - 1])
        assert close(want, all_bridged[d - 1], "fp32")  # one bridge per depth, in both graphs
        for got in (out, all_out[d - 1]):
            assert close(got, want, precision), (e.file, d)
        for got in (raw, all_raw[d - 1]):
            assert close(got, ref[d - 1], precision), (e.file, d)
    assert close(all_out[3], ref[3], precision)  # the gallery depth's bridge is the identity


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_chained_segments_equal_every_exit(tiny_checkpoint, tiny_bundle, fp16_bundle, precision):
    """Blocks run one segment at a time on the hidden state give each exit's embedding, raw
    and bridged."""
    bundle = tiny_bundle if precision == "fp32" else fp16_bundle
    _, cfg = load_backbone(tiny_checkpoint)
    images = real_images(cfg)
    ref = torch_reference(tiny_checkpoint, images)
    m = Manifest.read(bundle)
    assert [(s.first, s.last) for s in m.segments] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    hidden = images
    for seg in m.segments:
        feed = {SEGMENT_INPUT if seg.first else INPUT_NAME: hidden}
        hidden, out, raw = onnx_session(bundle / seg.file).run(
            [SEGMENT_OUTPUT, EXIT_OUTPUT, RAW_EXIT_OUTPUT], feed
        )
        assert hidden.shape[:1] == out.shape[:1] == (len(images),)
        assert close(out, bridged_reference(bundle / seg.file, ref[seg.last - 1]), precision)
        assert close(raw, ref[seg.last - 1], precision)
    broken = m.model_dump() | {"segments": [s.model_dump() for s in m.segments[1:]]}
    with pytest.raises(ValueError, match="segments must chain"):
        Manifest.model_validate(broken)


def test_dynamic_batch_axis(tiny_bundle) -> None:
    session = onnx_session(tiny_bundle / "exit_02.onnx")
    assert session.get_inputs()[0].shape[0] == "batch"
    for n in (1, 3, 17):
        x = np.zeros((n, 28, 28, 3), dtype=np.uint8)
        assert session.run(None, {INPUT_NAME: x})[0].shape == (n, 32)


def graph_bytes(path: Path) -> int:
    """A graph's size with the shared weights it reads (its file plus its external tensors)."""
    model = onnx.load(str(path), load_external_data=False)
    external = sum(
        int(entry.value)
        for tensor in model.graph.initializer
        for entry in tensor.external_data
        if entry.key == "length"
    )
    return path.stat().st_size + external


def test_graph_size_grows_with_depth(tiny_bundle, tiny_checkpoint) -> None:
    backbone, _ = load_backbone(tiny_checkpoint)
    block_bytes = 4 * sum(p.numel() for p in backbone.blocks[0].parameters())
    sizes = [graph_bytes(tiny_bundle / f"exit_{d:02d}.onnx") for d in (1, 2, 3, 4)]
    assert sizes == sorted(sizes)
    grown = sizes[-1] - sizes[0]
    # Roughly (L-1) blocks of weights; the rest is per-node graph overhead (large at dim 32).
    assert 0.9 * 3 * block_bytes <= grown <= 1.5 * 3 * block_bytes
    # A truncated graph, not the full model with an early return: fewer nodes too.
    nodes = [len(onnx.load(str(tiny_bundle / f"exit_{d:02d}.onnx")).graph.node) for d in (1, 4)]
    assert nodes[0] < nodes[1]


def test_weights_are_stored_once_for_every_graph(tiny_bundle, tiny_checkpoint) -> None:
    backbone, _ = load_backbone(tiny_checkpoint)
    model_bytes = 4 * sum(p.numel() for p in backbone.parameters())
    m = Manifest.read(tiny_bundle)
    graphs = [*m.exits, *m.segments, m.all_exits]
    assert (
        m.weights is not None and (tiny_bundle / m.weights.file).stat().st_size == m.weights.bytes
    )
    read = sum(graph_bytes(tiny_bundle / g.file) for g in graphs)
    stored = sum(p.stat().st_size for p in tiny_bundle.iterdir())
    # The graphs read (L + 1) / 2 + 2 copies of the model in all (4.5 at depth 4); the folder
    # holds about one, plus the bridges (one D x D map per depth) and the graphs' protobufs.
    assert read > 2 * stored
    assert m.weights.bytes < 1.5 * model_bytes + 4 * m.model.depth * (m.model.dim**2 + m.model.dim)
    for g in graphs:
        assert external_locations(tiny_bundle / g.file) <= {m.weights.file}


def test_manifest_contents(tiny_bundle, tiny_checkpoint) -> None:
    m = Manifest.read(tiny_bundle)
    metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())
    assert [e.knn_top1 for e in m.exits] == metrics["knn_top1"]
    assert [e.linear_top1 for e in m.exits] == metrics["linear_top1"]
    assert m.method == "mocov3" and m.distill and m.model.depth == 4
    assert m.preprocess.crop == 28 and m.preprocess.interpolation == "bilinear"
    assert len(bundle_id(tiny_bundle)) == 64


def _copy(bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_verify_passes_on_a_good_bundle(tiny_bundle) -> None:
    assert verify_bundle(tiny_bundle).model.depth == 4


def test_verify_catches_a_flipped_byte(tiny_bundle, tmp_path) -> None:
    b = _copy(tiny_bundle, tmp_path)
    raw = bytearray((b / "exit_03.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (b / "exit_03.onnx").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"exit_03\.onnx sha256 mismatch"):
        verify_bundle(b)


def test_verify_catches_an_edited_manifest(tiny_bundle, tmp_path) -> None:
    b = _copy(tiny_bundle, tmp_path)
    text = json.loads((b / MANIFEST).read_text())
    text["exits"][0]["knn_top1"] = 0.99
    (b / MANIFEST).write_text(json.dumps(text, indent=2))
    with pytest.raises(BundleError, match="modified after export"):
        verify_bundle(b)


def test_verify_catches_a_deleted_graph(tiny_bundle, tmp_path) -> None:
    b = _copy(tiny_bundle, tmp_path)
    (b / "all_exits.onnx").unlink()
    with pytest.raises(BundleError, match=r"all_exits\.onnx missing"):
        verify_bundle(b)


def test_verify_cli_one_line_reason(tiny_bundle, tmp_path, repo_root) -> None:
    b = _copy(tiny_bundle, tmp_path)
    (b / "exit_01.onnx").write_bytes(b"truncated")
    res = subprocess.run(
        [sys.executable, "-m", "export", "verify", str(b)],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {b}: exit_01.onnx sha256 mismatch (corrupt or replaced)"
    ]


def test_failed_export_leaves_no_bundle(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "bundles" / "b"

    def crash(name: str) -> None:
        if name == "exit_03.onnx":
            raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError, match="killed"):
        export_bundle(tiny_checkpoint, out, progress=False, _after_graph=crash)
    assert not out.exists()
    assert list((tmp_path / "bundles").iterdir()) == []


def test_refuses_existing_out_unless_forced(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "b"
    export_bundle(tiny_checkpoint, out, exit_depths="2", progress=False)
    first = bundle_id(out)
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(tiny_checkpoint, out, exit_depths="2", progress=False)
    export_bundle(tiny_checkpoint, out, exit_depths="1,2", force=True, progress=False)
    assert Manifest.read(out).exit_depths == [1, 2] and bundle_id(out) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--exit-depths", "0,2"], "exit depth 0 out of range 1..4"),
        (["--exit-depths", "5"], "exit depth 5 out of range 1..4"),
    ],
)
def test_cli_bad_requests(tiny_checkpoint, tmp_path, repo_root, args, reason) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "export", str(tiny_checkpoint), str(tmp_path / "o"), *args],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip() == f"error: {reason}"
    assert not (tmp_path / "o").exists()


def test_cli_missing_and_corrupt_checkpoint(tmp_path, repo_root) -> None:
    def run(ckpt):
        return subprocess.run(
            [sys.executable, "-m", "export", str(ckpt), str(tmp_path / "o")],
            cwd=repo_root, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    res = run(tmp_path / "nope")
    assert res.returncode == 2 and "checkpoint directory not found" in res.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model": {"depth": "deep"}}')
    res = run(bad)
    assert res.returncode == 2 and "config does not rebuild the model" in res.stderr


def test_profile_writes_nothing_into_the_bundle(tiny_bundle, tmp_path, repo_root) -> None:
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tiny_bundle.iterdir())
    res = subprocess.run(
        [sys.executable, "-m", "export", "profile", str(tiny_bundle), "--batch-sizes", "1,4",
         "--repeats", "3", "--plot", str(tmp_path / "p.png")],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "| 4 | 1.00 | 4 |" in res.stdout
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tiny_bundle.iterdir()) == before


def test_manifest_imports_without_torch(repo_root) -> None:
    code = "import sys, export.manifest, export.verify; assert 'torch' not in sys.modules"
    res = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
