"""Bridges: the ridge fit by hand, folding into ONNX and back, the data they are fitted on,
and ``python -m export bridge`` upgrading a format-1 bundle that a server then serves."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from export.bridges.build import data_roles
from export.bridges.fit import _solve, fit_ridge, identity
from export.bridges.fold import fold, unfold
from export.manifest import (
    ALL_EXITS_OUTPUT,
    EXIT_OUTPUT,
    INPUT_NAME,
    MANIFEST,
    MANIFEST_DIGEST,
    RAW_EXIT_OUTPUT,
    Manifest,
    bundle_id,
    file_sha256,
)
from export.parity import onnx_session
from export.verify import verify_bundle
from tests.service.server import Server
from training.data import load_splits


def test_the_ridge_solution_by_hand() -> None:
    """x = (1, 2, 3), y = 2x + 1: centred, XᵀX = 2 and XᵀY = 4, so with λ = 2 the slope is
    4 / (2 + 2) = 1 and the intercept ȳ − x̄·w = 5 − 2 = 3; with λ = 0 it is the line itself."""
    x = np.array([[1.0], [2.0], [3.0]])
    y = 2 * x + 1
    w, b = _solve(x, y, 2.0)
    assert np.allclose(w, [[1.0]]) and np.allclose(b, [3.0])
    w, b = _solve(x, y, 0.0)
    assert np.allclose(w, [[2.0]]) and np.allclose(b, [1.0])


def test_fit_recovers_a_linear_map_and_picks_a_small_lambda_without_noise() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    a, c = rng.normal(size=(8, 6)), rng.normal(size=6)
    ridge = fit_ridge(x, x @ a + c)
    assert np.abs(ridge.weight - a).max() < 1e-3 and np.abs(ridge.bias - c).max() < 1e-3
    assert ridge.holdout_cosine > 0.999999
    mapped = ridge.apply(x[:5])
    assert np.allclose(np.linalg.norm(mapped, axis=1), 1.0)
    noisy = fit_ridge(x, x @ a + c + rng.normal(scale=30.0, size=(400, 6)))
    assert noisy.lam > ridge.lam  # noise is worth shrinking
    with pytest.raises(ValueError, match="at least 10"):
        fit_ridge(x[:9], x[:9])
    assert np.array_equal(identity(4).apply(np.eye(4)), np.eye(4))


def test_fitting_gallery_and_query_images_are_disjoint_and_never_the_test_split() -> None:
    fit, gallery, queries = data_roles("mnist5k", 0.2)
    splits = load_splits("mnist5k", 0.2)
    test = set(splits.test.indices.tolist())
    fit_i = set(splits.train.indices[fit.indices].tolist())
    gallery_i = set(splits.train.indices[gallery.indices].tolist())
    assert not fit_i & gallery_i and not (fit_i | gallery_i) & test
    assert queries.name == splits.test.name and len(queries) == len(test) == 1000  # all of it
    assert len(fit_i) == len(gallery_i) == 2000


def test_fold_then_unfold_gives_the_graph_back_byte_for_byte(tiny_bundle) -> None:
    bridged = onnx.load(str(tiny_bundle / "exit_02.onnx"))  # its weights.bin data read inline
    for tensor in bridged.graph.initializer:  # loading leaves an explicit "inline" mark
        tensor.ClearField("data_location")
    raw = unfold(bridged, EXIT_OUTPUT)
    assert [o.name for o in raw.graph.output] == [EXIT_OUTPUT]
    again = fold(raw, EXIT_OUTPUT, *weights(bridged))
    assert again.SerializeToString() == bridged.SerializeToString()


def weights(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return init["bridge_weight"], init["bridge_bias"]


def as_format_1(bundle, out) -> None:
    """``bundle`` as the exporter wrote it before bridges: every graph unfolded (byte-equal to
    the exporter's own, as the test above shows) and a format-1 manifest."""
    out.mkdir(parents=True)
    m = json.loads((bundle / MANIFEST).read_text())
    for entry in [*m["exits"], *m["segments"], m["all_exits"]]:
        output = ALL_EXITS_OUTPUT if entry is m["all_exits"] else EXIT_OUTPUT
        onnx.save(unfold(onnx.load(str(bundle / entry["file"])), output), str(out / entry["file"]))
        entry["sha256"] = file_sha256(out / entry["file"])
        entry.pop("bridge_lambda", None), entry.pop("retrieval", None)
    m["format_version"] = 1
    del m["bridge"], m["weights"]  # graphs saved whole, as format 1 wrote them
    (out / MANIFEST).write_text(json.dumps(m, indent=2))
    (out / MANIFEST_DIGEST).write_text(file_sha256(out / MANIFEST) + "\n")


def test_export_bridge_upgrades_an_old_bundle_that_then_serves(tiny_bundle, tmp_path, repo_root):
    old, new = tmp_path / "old", tmp_path / "new"
    as_format_1(tiny_bundle, old)
    assert verify_bundle(old).bridge is None
    before_id = bundle_id(old)
    run = [sys.executable, "-m", "export", "bridge", str(old), "--out", str(new)]
    res = subprocess.run(run, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "--dataset" in res.stderr and not new.exists(), res.stderr
    res = subprocess.run([*run, "--dataset", "mnist5k"], cwd=repo_root, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| 1 |" in res.stdout and f"id {bundle_id(new)[:12]}" in res.stdout
    assert bundle_id(old) == before_id and verify_bundle(old).bridge is None  # untouched
    upgraded, exported = verify_bundle(new), Manifest.read(tiny_bundle)
    # the same data, the same seeds, the same graphs: the same bridges, bit for bit
    assert [e.sha256 for e in upgraded.exits] == [e.sha256 for e in exported.exits]
    assert [e.retrieval for e in upgraded.exits] == [e.retrieval for e in exported.exits]
    assert upgraded.bridge == exported.bridge
    images = np.random.default_rng(3).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    bridged, raw = onnx_session(new / "exit_01.onnx").run([EXIT_OUTPUT, RAW_EXIT_OUTPUT],
                                                          {INPUT_NAME: images})  # fmt: skip
    (before,) = onnx_session(old / "exit_01.onnx").run(None, {INPUT_NAME: images})
    assert np.array_equal(raw, before) and not np.allclose(bridged, before, atol=1e-3)
    with Server(new, tmp_path / "data", tmp_path / "log") as srv, srv.client() as c:
        assert c.get("/v1/model").json()["model"] == bundle_id(new)
        r = c.post("/v1/search", json={"vector": [1.0] + [0.0] * 31, "exit_depth": 1})
        assert r.status_code == 200, r.text
