"""Retrieval at scale: FAISS flat vs HNSW vs IVF at 100k and 1M vectors of the default model's
dimension — recall@10 against exact search, p50 single-query latency, memory per vector.

Vectors are real: final-exit embeddings of augmented mnist5k images (MoCo v3 augmentations,
``--real`` of them). To reach 1M, each real embedding is repeated with small Gaussian jitter
(σ = --jitter, renormalised), which keeps the data's cluster structure; queries are fresh
augmentations of held-out images, never in the database.

    python -m bench.retrieval [--bundle bundles/default] [--sizes 100000,1000000]

Last line: recall@10 and p50 at the largest size for the best approximate index (target at 1M:
recall@10 >= 0.95 at p50 <= 5 ms).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort

from bench.common import DEFAULT_BUNDLE, machine
from export.manifest import EXIT_OUTPUT, INPUT_NAME, Manifest


def augmented_embeddings(bundle: Path, n: int, seed: int, split: str) -> np.ndarray:
    """Final-exit embeddings of ``n`` augmented mnist5k images (uint8 through the graph)."""
    import torch

    from training.augment import two_view_transforms
    from training.config import DataConfig
    from training.data import load_splits

    m = Manifest.read(bundle)
    cfg = DataConfig(crop_min_scale=0.3, hflip=0.0)
    view = two_view_transforms(m.model.img_size, cfg)[0]
    geometric = type(view)(view.transforms[:-2])  # drop ToTensor + Normalize: uint8 for the graph
    splits = load_splits("mnist5k", 0.2)
    source = splits.train if split == "train" else splits.test
    torch.manual_seed(seed)
    session = ort.InferenceSession(
        str(bundle / m.exits[-1].file), providers=["CPUExecutionProvider"]
    )
    out = []
    batch = []
    for i in range(n):
        batch.append(np.asarray(geometric(source.image(i % len(source)))))
        if len(batch) == 256 or i == n - 1:
            out.append(session.run([EXIT_OUTPUT], {INPUT_NAME: np.stack(batch)})[0])
            batch = []
    return np.concatenate(out).astype(np.float32)


def database(real: np.ndarray, size: int, jitter: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    reps = -(-size // len(real))
    x = np.tile(real, (reps, 1))[:size]
    if size > len(real):
        noise = rng.standard_normal(x[len(real) :].shape).astype(np.float32)
        x[len(real) :] += jitter * noise / np.sqrt(x.shape[1])
    faiss.normalize_L2(x)
    return x


def evaluate(index, queries: np.ndarray, truth: np.ndarray, k: int = 10) -> tuple[float, float]:
    _, got = index.search(queries, k)
    recall = np.mean([len(set(g) & set(t)) / k for g, t in zip(got, truth, strict=True)])
    times = []
    for q in queries[:200]:
        start = time.perf_counter()
        index.search(q[None], k)
        times.append(1000 * (time.perf_counter() - start))
    return float(recall), float(np.median(times))


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--real", type=int, default=50_000, help="real augmented embeddings")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--jitter", type=float, default=0.3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    real = augmented_embeddings(args.bundle, args.real, seed=1, split="train")
    queries = augmented_embeddings(args.bundle, args.queries, seed=2, split="test")
    print(f"machine: {machine()}; {args.real} real embeddings (dim {real.shape[1]}) in "
          f"{time.perf_counter() - t0:.0f} s; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")  # fmt: skip
    results = []
    for size in sizes:
        xb = database(real, size, args.jitter, seed=size)
        d = xb.shape[1]
        flat = faiss.IndexFlatIP(d)
        flat.add(xb)
        _, truth = flat.search(queries, 10)
        nlist = int(4 * np.sqrt(size))
        candidates = {
            "Flat": (flat, None, 0.0),
        }
        start = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.add(xb)
        candidates["HNSW32"] = (hnsw, "efSearch", time.perf_counter() - start)
        start = time.perf_counter()
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(xb[np.random.default_rng(0).choice(size, min(size, 50 * nlist), replace=False)])
        ivf.add(xb)
        candidates[f"IVF{nlist},Flat"] = (ivf, "nprobe", time.perf_counter() - start)
        for name, (index, knob, build_s) in candidates.items():
            settings = {"efSearch": (32, 64, 128), "nprobe": (8, 32, 64)}.get(knob, (None,))
            for value in settings:
                if knob == "efSearch":
                    index.hnsw.efSearch = value
                elif knob == "nprobe":
                    index.nprobe = value
                recall, p50 = evaluate(index, queries, truth)
                bytes_per = len(faiss.serialize_index(index)) / size
                results.append({
                    "size": size, "index": name, "param": f"{knob}={value}" if knob else "",
                    "recall@10": recall, "p50_ms": p50, "bytes_per_vector": bytes_per,
                    "build_s": build_s,
                })  # fmt: skip
        del candidates, hnsw, ivf, flat, xb
    header = "| vectors | index | search param | recall@10 | p50 ms | bytes/vector | build s |"
    print("\n" + header)
    print("|---:|---|---|---:|---:|---:|---:|")
    for r in results:
        cells = [
            f"{r['size']:,}",
            r["index"],
            r["param"],
            f"{r['recall@10']:.3f}",
            f"{r['p50_ms']:.3f}",
            f"{r['bytes_per_vector']:.0f}",
            f"{r['build_s']:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    top = max(sizes)
    approx = [r for r in results if r["size"] == top and r["index"] != "Flat"]
    ok = [r for r in approx if r["recall@10"] >= 0.95]
    best = min(ok, key=lambda r: r["p50_ms"]) if ok else max(approx, key=lambda r: r["recall@10"])
    print(
        f"\nat {top:,}: best approximate {best['index']} {best['param']}: recall@10 "
        f"{best['recall@10']:.3f} at p50 {best['p50_ms']:.2f} ms (target >= 0.95 at <= 5 ms)"
    )
    return {"results": results}


if __name__ == "__main__":
    main()
