"""The assembled method: EMA teacher, gradients, and that training lowers each loss."""

from __future__ import annotations

import copy

import pytest
import torch

from training.loop import param_groups, seed_everything
from training.sdssl import SDSSL


def test_ema_update_is_exact(tiny_cfg) -> None:
    tiny_cfg.train.method = "mocov3"
    model = SDSSL(tiny_cfg)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = copy.deepcopy(model.teacher.state_dict())
    student = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.update_teacher(0.9)
    after = model.teacher.state_dict()
    for name, value in student.items():
        expected = 0.9 * before[f"backbone.{name}"] + 0.1 * value
        torch.testing.assert_close(after[f"backbone.{name}"], expected)
    for name, p in model.projectors[-1].named_parameters():
        expected = 0.9 * before[f"projector.{name}"] + 0.1 * p.detach()
        torch.testing.assert_close(after[f"projector.{name}"], expected)


@pytest.mark.parametrize("method", ["mocov3", "byol"])
def test_teacher_gets_no_gradient(tiny_cfg, mnist_batch, method) -> None:
    tiny_cfg.train.method = method
    model = SDSSL(tiny_cfg)
    loss, _ = model(mnist_batch[:16], mnist_batch[16:], 0.5)
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert model.backbone.blocks[0].attn.qkv.weight.grad is not None
    # Teacher parameters are never handed to the optimizer.
    optimised = {id(p) for g in param_groups(model, 0.05) for p in g["params"]}
    assert not optimised & {id(p) for p in model.teacher.parameters()}


def test_baseline_has_only_final_heads(tiny_cfg) -> None:
    tiny_cfg.train.method = "mocov3"
    tiny_cfg.train.distill = False
    model = SDSSL(tiny_cfg)
    assert model.head_depths == [tiny_cfg.model.depth]
    assert len(model.projectors) == 1 and len(model.predictors) == 1


def test_param_groups_skip_decay_on_biases_and_1d(tiny_cfg) -> None:
    model = SDSSL(tiny_cfg)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])


@pytest.mark.parametrize("method", ["simclr", "byol", "mocov3"])
@pytest.mark.parametrize("distill", [False, True])
def test_few_steps_lower_the_loss(tiny_cfg, mnist_batch, method, distill) -> None:
    seed_everything(0)
    tiny_cfg.train.method = method
    tiny_cfg.train.distill = distill
    model = SDSSL(tiny_cfg)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=2e-3)
    v1, v2 = mnist_batch[:16], mnist_batch[16:]
    losses = []
    for _ in range(12):
        loss, _ = model(v1, v2, 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_teacher(0.99)
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def _heads_model(method: str, reference: bool):
    from tests.bundles import TINY_CONFIG
    from training.config import load_config
    from training.sdssl import SDSSL

    cfg = load_config(TINY_CONFIG, [f"train.method={method}", f"heads.reference_bn={reference}"])
    return SDSSL(cfg)


def test_mocov3_byol_heads_as_the_reference_builds_them() -> None:
    """MoCo v3's predictor ends on affine-free BN; with reference_bn each view's BN statistics
    come from that view only, so one view's rows do not depend on the other view."""
    import torch
    from torch import nn

    moco = _heads_model("mocov3", True)
    last = moco.predictors[0][-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine
    assert not isinstance(_heads_model("mocov3", False).predictors[0][-1], nn.BatchNorm1d)
    assert not isinstance(_heads_model("byol", True).predictors[0][-1], nn.BatchNorm1d)

    torch.manual_seed(0)
    x = torch.randn(16, 32)
    other = torch.cat([x[:8], torch.randn(8, 32) * 5])  # the second view changed
    for method, per_view in (("mocov3", True), ("byol", True), ("simclr", False)):
        model = _heads_model(method, True).train()
        proj = model.projectors[-1]
        a, b = model._heads(proj, x, 8), model._heads(proj, other, 8)
        assert torch.allclose(a[:8], b[:8]) == per_view, method
    joint = _heads_model("mocov3", False).train()
    a, b = joint._heads(joint.projectors[-1], x, 8), joint._heads(joint.projectors[-1], other, 8)
    assert not torch.allclose(a[:8], b[:8])  # one batch: the views' statistics mix
