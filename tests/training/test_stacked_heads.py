"""Stacked heads compute what the separate heads compute: outputs, gradients, BN statistics."""

from __future__ import annotations

import pytest
import torch

from training.heads import build_mlp
from training.stacked_heads import StackedMLP


@pytest.mark.parametrize("last_bn", [True, False])
def test_stacked_mlp_equals_separate_mlps(last_bn: bool) -> None:
    # In float64: the parity is of the maths. In float32 one batched matmul and five separate
    # ones sum in different orders (differently on different CPUs), and gradients of ~100 missed
    # a fixed tolerance on CI's machine.
    torch.manual_seed(0)
    heads, n = 5, 24
    separate = [build_mlp(3, 16, 32, 8, last_bn).double() for _ in range(heads)]
    stacked = StackedMLP(heads, 3, 16, 32, 8, last_bn).double().load_from(separate)
    x = torch.randn(heads, n, 16, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    want = torch.stack([mlp(xi) for mlp, xi in zip(separate, x2, strict=True)])
    got = stacked(x)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)
    upstream = torch.randn(got.shape, dtype=torch.float64)  # a different weight per output
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    assert torch.allclose(x.grad, x2.grad, rtol=1e-9, atol=1e-9)
    first = torch.stack([mlp[0].weight.grad.t() for mlp in separate])
    assert torch.allclose(stacked.weights[0].grad, first, rtol=1e-9, atol=1e-9)
    running = torch.cat([mlp[1].running_mean for mlp in separate])
    assert torch.allclose(stacked.norms[0].running_mean, running, atol=1e-12)
    stacked.eval()
    for mlp in separate:
        mlp.eval()
    want = torch.stack([mlp(xi) for mlp, xi in zip(separate, x2.detach(), strict=True)])
    assert torch.allclose(stacked(x.detach()), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["simclr", "mocov3", "byol"])
def test_sdssl_loss_is_the_same_with_stacked_heads(method: str) -> None:
    from tests.bundles import TINY_CONFIG
    from training.config import load_config
    from training.sdssl import SDSSL

    torch.manual_seed(0)
    plain = SDSSL(load_config(TINY_CONFIG, [f"train.method={method}"])).train()
    stacked = SDSSL(load_config(TINY_CONFIG, [f"train.method={method}", "heads.stacked=true"]))
    stacked.train()
    assert stacked.mid_projectors is not None and len(stacked.projectors) == 1
    stacked.backbone.load_state_dict(plain.backbone.state_dict())
    stacked.mid_projectors.load_from(list(plain.projectors[:-1]))
    stacked.projectors[0].load_state_dict(plain.projectors[-1].state_dict())
    if plain.predictors is not None:
        stacked.predictors.load_from(list(plain.predictors))
    if plain.teacher is not None:
        stacked.teacher.load_state_dict(plain.teacher.state_dict())
    v = torch.randn(8, 3, 28, 28)
    want, want_logs = plain(v, v.flip(-1), 0.5)
    got, got_logs = stacked(v, v.flip(-1), 0.5)
    assert torch.allclose(got, want, atol=1e-5), (got_logs, want_logs)
    got.backward()
    assert stacked.mid_projectors.weights[0].grad is not None
