"""Is training starved by its data pipeline? Images/s of the whole training loop (loader,
augmentation, step) against the fixed-batch step alone, on one device and model, in one run:

- ``cpu`` augmentation: torchvision per image in ``--workers`` loader processes (the default);
- ``device`` augmentation: the loader only decodes; views are made a batch at a time where the
  model runs (``data.augment_on: device``).

    python -m bench.train_throughput [--device cuda] [--bf16] [--workers 4] [--steps 30]

Last line: whole loop / fixed-batch step per path (target >= 0.8 on a GPU).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch

from bench.train_step import step_times, sync
from training.config import load_config
from training.device_augment import DeviceTwoViews
from training.loop import build_loader, param_groups, seed_everything
from training.sdssl import SDSSL


def whole_loop(cfg, device: torch.device, steps: int, bf16: bool) -> tuple[float, torch.Tensor]:
    """Images/s over ``steps`` optimizer steps fed by the real loader (after 3 warm-up steps),
    and the first batch's two views (for the fixed-batch comparison)."""
    seed_everything(0)
    model = SDSSL(cfg).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    loader, sampler = build_loader(cfg, 0)
    sampler.set_epoch(0)
    on_device = cfg.data.augment_on == "device"
    aug = DeviceTwoViews(cfg.data, cfg.model.img_size) if on_device else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    first, started = None, 0.0
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for i, batch in enumerate(itertools.islice(batches, steps + 3)):
        if i == 3:
            sync(device)
            started = time.perf_counter()
        if aug is not None:
            v1, v2 = aug(batch[0].to(device, non_blocking=True), *batch[1:])
        else:
            v1, v2 = batch[0].to(device), batch[1].to(device)
        if first is None:
            first = torch.cat([v1, v2]).detach()
        with autocast:
            loss, _ = model(v1, v2, 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_teacher(0.99)
    sync(device)
    return steps * cfg.train.batch_size / (time.perf_counter() - started), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="loader processes (cpu path)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per path")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = load_config(args.config)
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else (
        f"{torch.get_num_threads()} CPU threads")  # fmt: skip
    print(f"{cfg.train.method}+SDSSL, dim {cfg.model.embed_dim} depth {cfg.model.depth}, batch "
          f"{cfg.train.batch_size}; {where}{', bf16' if args.bf16 else ''}; "
          f"{args.workers} loader workers")  # fmt: skip
    print("| augmentation | whole loop img/s | fixed-batch step img/s | ratio |")
    print("|---|---:|---:|---:|")
    ratios = {}
    for where_aug in ("cpu", "device"):
        cfg.data.augment_on = where_aug
        cfg.data.num_workers = args.workers if where_aug == "cpu" else min(args.workers, 2)
        rate, batch = whole_loop(cfg, device, args.steps, args.bf16)
        fixed = statistics.median(step_times(cfg, batch, True, max(5, args.steps // 3), device,
                                             args.bf16))  # fmt: skip
        fixed_rate = cfg.train.batch_size / fixed
        ratios[where_aug] = rate / fixed_rate
        print(f"| {where_aug} | {rate:.0f} | {fixed_rate:.0f} | {ratios[where_aug]:.2f} |")
    print(
        f"whole loop / fixed-batch step: cpu augmentation {ratios['cpu']:.2f}, device "
        f"augmentation {ratios['device']:.2f} (target >= 0.8)"
    )


if __name__ == "__main__":
    main()
