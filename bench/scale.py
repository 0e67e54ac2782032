"""One gallery at scale: --items vectors (1 M, 10 M) bulk-imported, then served and searched
through the HTTP API, on one machine.

The vectors are drawn from a model of real gallery-space embeddings, so that recall means
something: a Gaussian mixture of 1,024 components fitted to the default bundle's depth-L
embeddings of the 5,000 mnist5k digits and of 4 random small rotations/shifts of each (25,000
points; k-means centroids as means, each component's diagonal variance from its members shrunk
toward the global one, weights by member count), every draw L2-normalised. The augmented
copies only fit the model; the gallery and the queries are fresh draws from it.

Each step is timed: drawing (``vectors.npy`` float16 + ``ids.txt``), ``sdssl-import`` (the import
rate), a server started on the imported data dir (restart to ready: the saved index is loaded, not
rebuilt), recall@10 of HTTP searches (held-out draws, ``k=10``, ``metadata=false``) against exact
search over the stored vectors, search latency p50/p99 at concurrency 1 and 8, the server's RSS, and
bytes per item on disk.

    python -m bench.scale --items 1000000 [--factory IVF1024,PQ64] [--nprobe 16] [--rerank 16]
    python -m bench.scale --sweep --items 10000000 --factory IVF4096,PQ32   # FAISS alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
from PIL import Image

from bench.common import DEFAULT_BUNDLE, ServerProcess, machine
from export.manifest import EXIT_OUTPUT, INPUT_NAME, Manifest, bundle_id
from export.parity import onnx_session
from service.inference.images import resize_center_crop

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = 1024
AUGMENTS = 4
SHRINK = 10.0  # pseudo-members of the global variance in each component's


def real_embeddings(bundle: Path, seed: int = 0) -> np.ndarray:
    """Gallery-depth embeddings of mnist5k and of AUGMENTS random small affine copies each."""
    from training.data import load_splits

    m = Manifest.read(bundle)
    depth = m.bridge.gallery_depth if m.bridge else m.model.depth
    p = m.preprocess
    session = onnx_session(bundle / m.exit(depth).file)
    images = load_splits("mnist5k", 0.2).all
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, len(images), 500):
        batch = []
        for i in range(start, min(start + 500, len(images))):
            img = images.image(i)
            variants = [img]
            for _ in range(AUGMENTS):
                angle, dx, dy = rng.uniform(-10, 10), *rng.integers(-2, 3, 2)
                variants.append(img.rotate(angle, Image.BILINEAR, translate=(int(dx), int(dy))))
            batch += [resize_center_crop(v, p.resize, p.crop, p.interpolation, 10**8)
                      for v in variants]  # fmt: skip
        out.append(session.run([EXIT_OUTPUT], {INPUT_NAME: np.stack(batch)})[0])
    return np.concatenate(out)


class Mixture:
    """A diagonal Gaussian mixture fitted by k-means (hard EM) to unit vectors."""

    def __init__(self, x: np.ndarray, k: int = COMPONENTS, seed: int = 0) -> None:
        km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, spherical=True)
        km.train(np.ascontiguousarray(x, dtype=np.float32))
        _, assign = km.index.search(x, 1)
        assign = assign.ravel()
        self.means = km.centroids.copy()
        overall = x.var(axis=0)
        counts = np.bincount(assign, minlength=k).astype(np.float64)
        var = np.zeros_like(self.means)
        for c in range(k):
            members = x[assign == c]
            if len(members):
                var[c] = ((members - self.means[c]) ** 2).sum(0)
        self.std = np.sqrt((var + SHRINK * overall) / (counts[:, None] + SHRINK)).astype(np.float32)
        self.weights = (counts + 1) / (counts + 1).sum()

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        comp = rng.choice(len(self.means), size=n, p=self.weights)
        x = self.means[comp] + self.std[comp] * rng.standard_normal(
            (n, self.means.shape[1]), dtype=np.float32
        )
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_source(mix: Mixture, n: int, folder: Path, chunk: int = 1_000_000) -> float:
    folder.mkdir(parents=True)
    started = time.perf_counter()
    vec = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16,
                                    shape=(n, mix.means.shape[1]))  # fmt: skip
    rng = np.random.default_rng(1)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        vec[start:stop] = mix.draw(stop - start, rng)
    vec.flush()
    del vec
    with open(folder / "ids.txt", "w") as fh:
        for start in range(0, n, chunk):
            fh.write("".join(f"s-{i:08d}\n" for i in range(start, min(n, start + chunk))))
    return time.perf_counter() - started


def exact_top(stored: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Row numbers of the exact top-k per query (inner product), over float16 rows in chunks."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(stored), 200_000):
        rows = np.asarray(stored[start : start + 200_000], dtype=np.float32)
        sims = queries @ rows.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.concatenate([best_s, np.take_along_axis(sims, top, 1)], axis=1)
        i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)
    return best_i


def rss_mib(pid: int) -> dict[str, float]:
    """Resident memory of a process in MiB: total, peak, and its anonymous (heap: the index,
    the models) and file-backed (mapped files: pages of vectors.f16, reclaimable) parts."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines)
    return {
        k: int(status[v].split()[0]) / 1024
        for k, v in (("rss", "VmRSS"), ("peak", "VmHWM"), ("anon", "RssAnon"), ("file", "RssFile"))
    }


def searches(
    url: str, queries: np.ndarray, concurrency: int
) -> tuple[list[float], list[list[str]]]:
    """Per-request latencies (ms) and the ids each query found."""
    found: list[list[str]] = [[] for _ in range(len(queries))]
    times: list[float] = []
    lock = threading.Lock()

    def worker(rows: range) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            for i in rows:
                body = {"vector": queries[i].tolist(), "k": 10, "metadata": False}
                t0 = time.perf_counter()
                r = c.post("/v1/search", json=body)
                ms = 1000 * (time.perf_counter() - t0)
                r.raise_for_status()
                found[i] = [h["id"] for h in r.json()["results"]]
                with lock:
                    times.append(ms)

    parts = [range(w, len(queries), concurrency) for w in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, found


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def run(args: argparse.Namespace, work: Path) -> dict:
    bundle, n = args.bundle, args.items
    bid = bundle_id(bundle)
    print(f"fitting the mixture ({COMPONENTS} components) ...", file=sys.stderr)
    mix = Mixture(real_embeddings(bundle))
    src = work / "source"
    draw_s = write_source(mix, n, src)
    queries = mix.draw(args.queries, np.random.default_rng(2)).astype(np.float32)
    data = work / "data"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SDSSL_")},
           "SDSSL_INDEX_FACTORY": args.factory, "SDSSL_NPROBE": str(args.nprobe),
           "SDSSL_RERANK": str(args.rerank)}  # fmt: skip
    print(f"importing {n:,} vectors ...", file=sys.stderr)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "service.lifecycle.bulk_import", str(bundle), str(src),
                    "--data-dir", str(data)], cwd=ROOT, env=env, check=True)  # fmt: skip
    import_s = time.perf_counter() - started
    folder = data / bid
    disk = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    stored = np.memmap(folder / "vectors.f16", dtype=np.float16, mode="r",
                       shape=(n, mix.means.shape[1]))  # fmt: skip
    truth = exact_top(stored, queries)
    settings = {"index_factory": args.factory, "nprobe": args.nprobe, "rerank": args.rerank,
                "threads": 1}  # fmt: skip
    server = ServerProcess(bundle, data, work / "server.log", **settings)
    started = time.perf_counter()
    server.start(timeout=600)
    ready_s = time.perf_counter() - started
    try:
        searches(server.url, queries[:50], 1)  # warm
        lat1, found = searches(server.url, queries, 1)
        lat8, _ = searches(server.url, queries, 8)
        rss = rss_mib(server.proc.pid)
    finally:
        server.stop()
    recall = statistics.mean(
        len({f"s-{i:08d}" for i in t} & set(f)) / 10 for t, f in zip(truth, found, strict=True)
    )
    return {
        "items": n, "factory": args.factory, "nprobe": args.nprobe, "rerank": args.rerank,
        "draw_s": draw_s, "import_s": import_s, "import_per_s": n / import_s,
        "ready_s": ready_s, "recall_at_10": recall,
        "p50_ms_c1": pct(lat1, 50), "p99_ms_c1": pct(lat1, 99),
        "p50_ms_c8": pct(lat8, 50), "p99_ms_c8": pct(lat8, 99),
        "rss_mib": rss["rss"], "peak_rss_mib": rss["peak"], "rss_anon_mib": rss["anon"],
        "rss_file_mib": rss["file"], "disk": disk,
        "bytes_per_item": sum(disk.values()) / n,
        "bytes_per_item_used": (sum(disk.values()) - disk["vectors.f16"]
                                + n * 2 * mix.means.shape[1]) / n,
    }  # fmt: skip


def report(r: dict) -> str:
    mib = 2**20
    lines = [
        f"{r['items']:,} items, {r['factory']} (nprobe {r['nprobe']}, re-rank x{r['rerank']}); "
        f"server threads 1",
        "",
        "| recall@10 | p50 ms c1 | p99 ms c1 | p50 ms c8 | p99 ms c8 | RSS MiB (peak) | "
        "import /s | restart to ready s | bytes/item on disk |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['recall_at_10']:.3f} | {r['p50_ms_c1']:.2f} | {r['p99_ms_c1']:.2f} | "
        f"{r['p50_ms_c8']:.2f} | {r['p99_ms_c8']:.2f} | "
        f"{r['rss_mib']:.0f} ({r['peak_rss_mib']:.0f}) | {r['import_per_s']:,.0f} | "
        f"{r['ready_s']:.1f} | {r['bytes_per_item']:.0f} "
        f"({r['bytes_per_item_used']:.0f} without the file's spare rows) |",
        "",
        f"RSS: {r['rss_anon_mib']:,.0f} MiB anonymous (index, models), {r['rss_file_mib']:,.0f} "
        "MiB file-backed (shared libraries and the touched pages of vectors.f16: reclaimable)",
        "",
        "files: " + ", ".join(f"{k} {v / mib:,.1f} MiB" for k, v in sorted(r["disk"].items())),
    ]
    return "\n".join(lines)


def sweep(args: argparse.Namespace) -> str:
    """FAISS alone, no server: recall@10 of the factory against exact search, per nprobe and
    re-rank depth (candidates = 10 x re-rank, ordered by exact cosine), and ms per query —
    how the served configuration was chosen."""
    mix = Mixture(real_embeddings(args.bundle))
    rng = np.random.default_rng(1)
    x = np.concatenate([mix.draw(min(500_000, args.items - s), rng)
                        for s in range(0, args.items, 500_000)]).astype(np.float16)  # fmt: skip
    q = mix.draw(args.queries, np.random.default_rng(2)).astype(np.float32)
    truth = exact_top(x, q)
    index = faiss.index_factory(x.shape[1], args.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    train = np.random.default_rng(0).choice(len(x), min(len(x), max(100_000, 39 * ivf.nlist)),
                                            replace=False)  # fmt: skip
    index.train(x[np.sort(train)].astype(np.float32))
    for start in range(0, len(x), 500_000):
        index.add(x[start : start + 500_000].astype(np.float32))
    lines = [f"{args.items:,} vectors, {args.factory}, {args.queries} queries (FAISS alone)", "",
             "| nprobe | re-rank | recall@10 | ms / query |", "|---:|---:|---:|---:|"]  # fmt: skip
    for nprobe in args.sweep_nprobe:
        ivf.nprobe = nprobe
        for rerank in args.sweep_rerank:
            started = time.perf_counter()
            _, cand = index.search(q, 10 * rerank)
            exact = np.einsum("qd,qcd->qc", q, x[np.maximum(cand, 0)].astype(np.float32))
            order = np.argsort(-np.where(cand >= 0, exact, -np.inf), axis=1)[:, :10]
            found = np.take_along_axis(cand, order, 1)
            ms = 1000 * (time.perf_counter() - started) / len(q)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
            lines.append(f"| {nprobe} | {rerank} | {recall:.3f} | {ms:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--factory", default="IVF1024,PQ64")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--rerank", type=int, default=16)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    ap.add_argument("--work", type=Path, default=None, help="keep the data here (default: tmp)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    ap.add_argument("--sweep", action="store_true",
                    help="FAISS alone (no import, no server): recall and time per nprobe and "
                    "re-rank depth for --factory (an IVF factory)")  # fmt: skip
    ap.add_argument("--sweep-nprobe", type=lambda v: [int(x) for x in v.split(",")],
                    default=[16, 48], help="default 16,48")  # fmt: skip
    ap.add_argument("--sweep-rerank", type=lambda v: [int(x) for x in v.split(",")],
                    default=[1, 16, 32, 64], help="default 1,16,32,64")  # fmt: skip
    args = ap.parse_args()
    print(f"machine: {machine()}")
    if args.sweep:
        print(sweep(args))
        return
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.work) as tmp:
        r = run(args, Path(tmp))
    print(report(r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
