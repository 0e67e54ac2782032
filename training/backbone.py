"""The ViT backbone: timm's ``VisionTransformer`` with the MoCo v3 recipe switches."""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer

from training.config import ModelConfig


def sincos_2d_pos_embed(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``[1, 1 + grid*grid, dim]`` with a zero CLS slot.

    A quarter of the channels each carry sin(w), cos(w), sin(h), cos(h) at geometric frequencies
    (MoCo v3, "An Empirical Study of Training Self-Supervised ViTs", section 4).
    """
    if dim % 4:
        raise ValueError("embedding dim must be a multiple of 4 for 2-D sin-cos")
    coords = torch.arange(grid, dtype=torch.float32)
    gh, gw = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out_w = gw.flatten()[:, None] * omega[None, :]
    out_h = gh.flatten()[:, None] * omega[None, :]
    pe = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), pe], dim=0)[None]


def build_backbone(cfg: ModelConfig) -> VisionTransformer:
    """A timm ViT with a CLS token, no classifier, and the configured recipe switches."""
    model = VisionTransformer(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=0,
        global_pool="token",
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        drop_path_rate=cfg.drop_path_rate,
        weight_init=cfg.weight_init,
    )
    if cfg.pos_embed == "sincos":
        grid = cfg.img_size // cfg.patch_size
        model.pos_embed.data.copy_(sincos_2d_pos_embed(grid, cfg.embed_dim))
        model.pos_embed.requires_grad = False
    proj = model.patch_embed.proj
    if cfg.weight_init == "moco":
        # MoCo v3 initialises the patch projection as one linear map of a flattened patch.
        val = math.sqrt(6.0 / float(cfg.in_chans * cfg.patch_size**2 + cfg.embed_dim))
        torch.nn.init.uniform_(proj.weight, -val, val)
        torch.nn.init.zeros_(proj.bias)
    if cfg.freeze_patch_embed:
        proj.weight.requires_grad = False
        proj.bias.requires_grad = False
    return model
