"""The training loop: thin on purpose. Parts live in sdssl.py, schedules.py, checkpoint.py."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from training import distributed
from training.augment import TwoViews, two_view_transforms
from training.checkpoint import METRICS, load_model, load_state, save_checkpoint
from training.config import (
    RUNTIME_KEYS,
    Config,
    changed_keys,
    distill_ratio,
    teacher_base_momentum,
    unused_keys,
)
from training.data import load_splits
from training.device_augment import DeviceTwoViews, RawImages, collate_same_size
from training.errors import ConfigError
from training.schedules import distill_weight, teacher_momentum, warmup_cosine
from training.sdssl import SDSSL

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as in the seed: no weight decay on biases and other 1-D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can skip the first ``skip`` samples of this rank's epoch."""

    skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return super().__len__() - self.skip


def build_loader(cfg: Config, seed: int) -> tuple[DataLoader, ResumableSampler]:
    splits = load_splits(cfg.data.dataset, cfg.data.test_fraction)
    source = splits.all if cfg.data.split == "all" else splits.train
    world = distributed.world_size()
    per_rank = cfg.train.batch_size // world
    if per_rank * world != cfg.train.batch_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} not divisible by {world} ranks")
    if len(source) < cfg.train.batch_size:
        raise ConfigError(
            f"dataset {cfg.data.dataset} has {len(source)} training images, fewer than "
            f"train.batch_size {cfg.train.batch_size}"
        )
    if cfg.data.augment_on == "device":
        dataset = RawImages(source, cfg.data, cfg.model.img_size, seed)
        collate = collate_same_size
    else:
        dataset = TwoViews(source, two_view_transforms(cfg.model.img_size, cfg.data), seed)
        collate = None
    sampler = ResumableSampler(
        dataset,
        num_replicas=world,
        rank=distributed.rank(),
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        pin_memory=cfg.data.augment_on == "device" and torch.cuda.is_available(),
    )
    return loader, sampler


def train(
    cfg: Config, out_dir: Path, resume: Path | None = None, *, bar_position: int | None = None
) -> Path:
    """Train ``cfg`` into checkpoint directory ``out_dir`` (saved every epoch); returns it.
    ``bar_position``: the progress bar's line, for runs that train side by side."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device()
    distributed.init_from_env(device)
    seed_everything(cfg.train.seed)

    loader, sampler = build_loader(cfg, cfg.train.seed)
    per_rank = cfg.train.batch_size // distributed.world_size()
    steps_per_epoch = len(loader)
    total = cfg.train.epochs * steps_per_epoch
    warmup = round(cfg.train.warmup_fraction * total)
    ratio = distill_ratio(cfg.train)
    m0 = teacher_base_momentum(cfg.train, total)

    step = 0
    if resume is not None:
        model = load_model(resume)
        ignored = RUNTIME_KEYS | unused_keys(cfg)
        changed = [k for k in changed_keys(model.cfg, cfg) if k not in ignored]
        if changed:
            raise ConfigError(f"--resume cannot change {', '.join(changed)}")
        model.cfg = cfg  # runtime fields (max_steps, threads, ...) may differ
    else:
        model = SDSSL(cfg)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
    if resume is not None:
        state = load_state(resume)
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed %s at step %d", resume, step)
    net: nn.Module = model
    if distributed.is_distributed():
        net = DistributedDataParallel(model)

    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if cfg.train.bf16
        else contextlib.nullcontext()
    )
    stop = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume is None:
        (out_dir / METRICS).unlink(missing_ok=True)  # scores of an earlier run would be stale
    bar = tqdm(
        total=stop,
        initial=step,
        desc=f"{cfg.train.method}{'+sd' if cfg.train.distill else ''}",
        position=bar_position,
        disable=not distributed.is_main(),
        dynamic_ncols=True,
    )
    on_device = (
        DeviceTwoViews(cfg.data, cfg.model.img_size) if cfg.data.augment_on == "device" else None
    )
    started = time.time()
    model.train()
    while step < stop:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        loader.dataset.epoch = epoch  # both datasets seed each sample's views with it
        # Resuming inside an epoch: same order, skip the batches already done.
        sampler.skip = (step - epoch * steps_per_epoch) * per_rank
        for batch in loader:
            # cpu: (view 1, view 2); device: (raw uint8 images, view 1's and 2's random choices)
            if on_device is not None:
                v1, v2 = on_device(batch[0].to(device, non_blocking=True), *batch[1:])
            else:
                v1, v2 = batch
            lr = warmup_cosine(step, total, cfg.train.lr, cfg.train.min_lr, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            lam = distill_weight(step, total, ratio, cfg.train.distill_ramp)
            with autocast:
                loss, logs = net(v1.to(device), v2.to(device), lam)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.update_teacher(teacher_momentum(step, total, m0))
            step += 1
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == stop:
                shown = {"loss": f"{logs['loss']:.3f}", "lr": f"{lr:.2e}"}
                if cfg.train.distill:
                    shown["lam"] = f"{lam:.3f}"
                bar.set_postfix(shown)
            if step >= stop:
                break
        if distributed.is_main():
            save_checkpoint(
                out_dir,
                model,
                optimizer,
                {
                    "step": step,
                    "total_steps": total,
                    "lr": lr,
                    "torch_rng": torch.get_rng_state(),
                    "wall_s": time.time() - started,
                },
            )
    bar.close()
    log.info("trained %d steps in %.0f s -> %s", step, time.time() - started, out_dir)
    return out_dir
