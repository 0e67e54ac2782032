"""The embedding at every exit depth: equals timm's full forward at L and a manual block loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.backbone import build_backbone, sincos_2d_pos_embed
from training.errors import ConfigError
from training.exits import block_index, exit_embeddings, exit_features, parse_exit_depths


def test_last_exit_equals_forward_features_cls(tiny_cfg, mnist_batch) -> None:
    torch.manual_seed(0)
    vit = build_backbone(tiny_cfg.model).eval()
    depth = tiny_cfg.model.depth
    with torch.no_grad():
        ours = exit_features(vit, mnist_batch, [depth])[0]
        ref = vit.forward_features(mnist_batch)[:, 0]
    torch.testing.assert_close(ours, ref)


def test_every_exit_equals_manual_block_loop(tiny_cfg, mnist_batch) -> None:
    torch.manual_seed(0)
    vit = build_backbone(tiny_cfg.model).eval()
    depths = list(range(1, tiny_cfg.model.depth + 1))
    with torch.no_grad():
        ours = exit_embeddings(vit, mnist_batch, depths)
        x = vit._pos_embed(vit.patch_embed(mnist_batch))
        x = vit.norm_pre(x)
        for i, blk in enumerate(vit.blocks):
            x = blk(x)
            manual = F.normalize(vit.norm(x)[:, 0], dim=-1)
            torch.testing.assert_close(ours[i], manual)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(depths), len(mnist_batch)))


def test_exit_order_follows_request(tiny_cfg, mnist_batch) -> None:
    vit = build_backbone(tiny_cfg.model).eval()
    with torch.no_grad():
        a = exit_features(vit, mnist_batch, [3, 1])
        b = exit_features(vit, mnist_batch, [1, 3])
    torch.testing.assert_close(a[0], b[1])
    torch.testing.assert_close(a[1], b[0])


def test_block_index_and_parsing() -> None:
    assert block_index(1, 12) == 0
    assert block_index(12, 12) == 11
    for bad in (0, 13, -1):
        with pytest.raises(ConfigError, match="out of range"):
            block_index(bad, 12)
    assert parse_exit_depths("all", 4) == [1, 2, 3, 4]
    assert parse_exit_depths("3,1,3", 4) == [1, 3]
    with pytest.raises(ConfigError):
        parse_exit_depths("1,9", 4)
    with pytest.raises(ConfigError):
        parse_exit_depths("one", 4)


def test_recipe_switches(tiny_cfg) -> None:
    vit = build_backbone(tiny_cfg.model)
    grid = tiny_cfg.model.img_size // tiny_cfg.model.patch_size
    torch.testing.assert_close(vit.pos_embed.data, sincos_2d_pos_embed(grid, 32))
    assert not vit.pos_embed.requires_grad
    assert not vit.patch_embed.proj.weight.requires_grad
    tiny_cfg.model.pos_embed = "learn"
    tiny_cfg.model.freeze_patch_embed = False
    vit = build_backbone(tiny_cfg.model)
    assert vit.pos_embed.requires_grad and vit.patch_embed.proj.weight.requires_grad
