"""Training-step cost of self-distillation: images/s of baseline and SDSSL steps, and the ratio.

Runs the default model's config (or --config) on a fixed batch of real mnist5k images, timing
optimizer steps of baseline and SDSSL interleaved (so both see the same machine noise).
The last line is the headline: SDSSL/baseline step time of the last method listed (default:
the config's method; target <= 1.5).

    python -m bench.train_step [--config configs/default.yaml] [--methods simclr,byol,mocov3]
                               [--stacked-heads] [--device cuda --bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from training.augment import eval_transform
from training.config import load_config
from training.data import load_splits
from training.loop import param_groups, seed_everything
from training.sdssl import SDSSL


def step_times(
    cfg, images: torch.Tensor, distill: bool, repeats: int, device: torch.device, bf16: bool
) -> list[float]:
    cfg.train.distill = distill
    seed_everything(0)
    model = SDSSL(cfg).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    images = images.to(device)
    half = images.shape[0] // 2
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    times = []
    for i in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        with autocast:
            loss, _ = model(images[:half], images[half:], 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_teacher(0.996)
        sync(device)
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    return times


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--methods", default=None, help="default: the config's method")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--stacked-heads", action="store_true",
                        help="the exits' heads as batched matmuls (heads.stacked)")  # fmt: skip
    args = parser.parse_args()
    cfg = load_config(args.config)
    cfg.heads.stacked = args.stacked_heads
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    device = torch.device(args.device)
    methods = (args.methods or cfg.train.method).split(",")
    batch = cfg.train.batch_size
    source = load_splits(cfg.data.dataset, cfg.data.test_fraction).train
    tf = eval_transform(cfg.model.img_size, cfg.data)
    images = torch.stack([tf(source.image(i % len(source))) for i in range(2 * batch)])
    where = (
        torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"{torch.get_num_threads()} CPU threads"
    )
    print(
        f"model dim {cfg.model.embed_dim} depth {cfg.model.depth} img {cfg.model.img_size} "
        f"patch {cfg.model.patch_size}; batch {batch} x 2 views; "
        f"{where}"
        f"{', bf16' if args.bf16 else ''}{', stacked heads' if args.stacked_heads else ''}"
    )
    print("| method | baseline img/s | SDSSL img/s | SDSSL/baseline step time |")
    print("|---|---:|---:|---:|")
    ratio = float("nan")
    for method in methods:
        cfg.train.method = method
        base, sd = [], []
        for _ in range(args.rounds):
            base += step_times(cfg, images, False, args.repeats, device, args.bf16)
            sd += step_times(cfg, images, True, args.repeats, device, args.bf16)
        tb, ts = statistics.median(base), statistics.median(sd)
        ratio = ts / tb
        print(f"| {method} | {batch / tb:.0f} | {batch / ts:.0f} | {ratio:.2f} |")
    print(f"SDSSL/baseline step time ({methods[-1]}): {ratio:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
