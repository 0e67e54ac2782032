"""The index lifecycle's costs, measured in one run on one machine:

- rollout throughput: a real server on the default bundle with ``--rollout-items`` real digits
  (kept inputs), rolled out to a second bundle of the same model (the default bundle's manifest
  re-serialised: another bundle id, the same graphs and cost) — items/s re-embedded at the
  gallery depth, against the gallery graph's own images/s in this process at the same batch size;
- snapshot size and time for ``--snapshot-items`` items of the default model's shape (one
  128-float gallery vector + a kept 28x28 PNG each), written straight through ``ItemIndex``;
  and the time to restore it and to open the restored folder (FAISS rebuilt from SQLite).

    python -m bench.collection [--rollout-items 2000] [--snapshot-items 100000]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.common import DEFAULT_BUNDLE, ServerProcess, digit_pngs, machine
from export.manifest import MANIFEST, MANIFEST_DIGEST, Manifest, bundle_id, file_sha256
from service.collection import ItemIndex, snapshots
from service.inference.engine import Engine, default_threads
from service.inference.images import prepare


def second_bundle(src: Path, dst: Path) -> Path:
    """The same graphs under another bundle id: the manifest re-serialised (and re-signed)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=1))
    (dst / MANIFEST_DIGEST).write_text(file_sha256(dst / MANIFEST))
    return dst


def in_process_rate(bundle: Path, pngs: list[bytes], batch: int, threads: int) -> float:
    """Images/s of the gallery graph at ``batch`` in this process (decoding excluded)."""
    m = Manifest.read(bundle)
    p = m.preprocess
    engine = Engine(bundle, m, "cpu", threads)
    rows = np.stack([prepare(b, p.resize, p.crop, p.interpolation, 10**8) for b in pngs[:batch]])
    engine.embed_gallery(rows)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < 3:
        engine.embed_gallery(rows)
        runs += 1
    return runs * batch / (time.perf_counter() - started)


def bench_rollout(n: int, batch: int, work: Path) -> dict:
    pngs = digit_pngs(min(n, 1000))
    target = second_bundle(DEFAULT_BUNDLE, work / "bundle-b")
    threads = default_threads()
    server = ServerProcess(DEFAULT_BUNDLE, work / "data", work / "server.log", threads=threads,
                           log_level="warning").start()  # fmt: skip
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for start in range(0, n, 64):
                ids = [f"d-{i}" for i in range(start, min(n, start + 64))]
                files = [("images", ("x.png", pngs[i % len(pngs)], "image/png"))
                         for i in range(start, start + len(ids))]  # fmt: skip
                c.post("/v1/items", files=files, data={"ids": ids}).raise_for_status()
            started = time.perf_counter()
            job = c.post("/v1/admin/rollout", json={"bundle": str(target), "batch": batch}).json()
            while job["state"] not in ("swapped", "failed"):
                time.sleep(0.2)
                job = c.get(f"/v1/admin/jobs/{job['id']}").json()
            wall = time.perf_counter() - started
    finally:
        server.stop()
    if job["state"] != "swapped":
        sys.exit(f"rollout failed: {job['error']}")
    graph = in_process_rate(DEFAULT_BUNDLE, pngs, batch, threads)
    return {"items": n, "copied": job["copied"], "job_items_per_s": job["items_per_s"],
            "wall_s": wall, "graph_images_per_s": graph, "batch": batch}  # fmt: skip


def kept_pngs(k: int = 64) -> list[bytes]:
    out = []
    for b in digit_pngs(k):  # as the server keeps them: lossless RGB, compress level 1
        buf = io.BytesIO()
        Image.open(io.BytesIO(b)).convert("RGB").save(buf, format="PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


def bench_snapshot(n: int, work: Path) -> dict:
    m = Manifest.read(DEFAULT_BUNDLE)
    depth, dim = m.bridge.gallery_depth, m.model.dim
    bid = bundle_id(DEFAULT_BUNDLE)
    folder = work / "snap-data" / bid
    idx = ItemIndex(folder, bid, depth, dim, snapshot_every=10**9)
    rng = np.random.default_rng(0)
    pngs = kept_pngs()
    started = time.perf_counter()
    chunk = 2000
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        v = rng.standard_normal((k, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
        idx.upsert([f"i-{start + j}" for j in range(k)],
                   [{"label": str((start + j) % 10)} for j in range(k)], v,
                   [pngs[(start + j) % len(pngs)] for j in range(k)])  # fmt: skip
    fill = time.perf_counter() - started
    try:
        made = snapshots.create({bid: folder}, work / "snapshots", bid[:12])
    finally:
        idx.close()
    restored = work / "restored"
    started = time.perf_counter()
    snapshots.restore(made.path, restored)
    restore_s = time.perf_counter() - started
    started = time.perf_counter()
    again = ItemIndex(restored / bid, bid, depth, dim)
    open_s = time.perf_counter() - started
    try:
        assert again.count() == n
    finally:
        again.close()
    db = (folder / "items.sqlite").stat().st_size
    return {"items": n, "fill_s": fill, "db_bytes": db, "snapshot_bytes": made.bytes,
            "snapshot_s": made.seconds, "restore_s": restore_s, "open_s": open_s,
            "depth": depth, "dim": dim}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollout-items", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64, help="rollout batch (default 64)")
    ap.add_argument("--snapshot-items", type=int, default=100_000)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-collection-") as tmp:
        work = Path(tmp)
        if args.rollout_items:
            r = bench_rollout(args.rollout_items, args.batch, work)
            print(f"\nrollout of {r['items']} items (default bundle, batch {r['batch']}, idle "
                  f"server): {r['wall_s']:.1f} s from POST to swap")  # fmt: skip
            print("| job items/s (gallery depth) | gallery graph in-process images/s | ratio |")
            print("|---:|---:|---:|")
            ratio = r["job_items_per_s"] / r["graph_images_per_s"]
            print(f"| {r['job_items_per_s']:.0f} | {r['graph_images_per_s']:.0f} | {ratio:.2f} |")
        if args.snapshot_items:
            s = bench_snapshot(args.snapshot_items, work)
            mb = 2**20
            print(f"\nsnapshot of {s['items']} items (one {s['dim']}-float vector at depth "
                  f"{s['depth']} + a kept PNG each; filled in {s['fill_s']:.0f} s)")  # fmt: skip
            print("| database MiB | snapshot MiB | snapshot s | restore s | open restored s |")
            print("|---:|---:|---:|---:|---:|")
            print(
                f"| {s['db_bytes'] / mb:.0f} | {s['snapshot_bytes'] / mb:.0f} | "
                f"{s['snapshot_s']:.1f} | {s['restore_s']:.1f} | {s['open_s']:.1f} |"
            )


if __name__ == "__main__":
    main()
