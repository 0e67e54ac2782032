"""Depth scaling of the torch model (not ONNX): latency of the truncated backbone per exit
depth at batch 1 and 256, on CPU or GPU (bf16 on GPU). Random weights; the default model's
shape and a ViT-S/16.

    python -m bench.torch_depth_scaling [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from training.backbone import build_backbone
from training.config import load_config
from training.exits import exit_embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for name in ("configs/default.yaml", "configs/vit_s16.yaml"):
        cfg = load_config(Path(name))
        vit = build_backbone(cfg.model).to(device, dtype).eval()
        depth = cfg.model.depth
        print(f"\n{name} (dim {cfg.model.embed_dim}, {cfg.model.img_size} px), {device}, {dtype}")
        print("| exit depth | d/L | batch 1 ms | ratio | batch 256 ms | ratio |")
        print("|---:|---:|---:|---:|---:|---:|")
        ms = {}
        for b in (1, 256):
            x = torch.randn(
                b, 3, cfg.model.img_size, cfg.model.img_size, device=device, dtype=dtype
            )
            for d in range(1, depth + 1):
                times = []
                with torch.no_grad():
                    for i in range(args.repeats + 3):
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        start = time.perf_counter()
                        exit_embeddings(vit, x, [d])
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        if i >= 3:
                            times.append(1000 * (time.perf_counter() - start))
                ms[(d, b)] = statistics.median(times)
        for d in range(1, depth + 1):
            print(f"| {d} | {d / depth:.2f} | {ms[(d, 1)]:.3f} | {ms[(d, 1)] / ms[(depth, 1)]:.2f} "
                  f"| {ms[(d, 256)]:.3f} | {ms[(d, 256)] / ms[(depth, 256)]:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
