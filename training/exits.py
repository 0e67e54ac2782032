"""Exit depths: the one place that turns ``exit_depth`` into timm block indices and embeddings.

An *exit depth* d (1..L) is the number of transformer blocks run. The embedding at exit depth d is
the CLS token of block d's output after the model's shared final LayerNorm, L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from training.errors import ConfigError


def block_index(exit_depth: int, depth: int) -> int:
    """timm's 0-based block index of exit depth ``exit_depth`` (1..depth)."""
    if not 1 <= exit_depth <= depth:
        raise ConfigError(f"exit depth {exit_depth} out of range 1..{depth}")
    return exit_depth - 1


def parse_exit_depths(spec: str | Sequence[int] | None, depth: int) -> list[int]:
    """``"all"``/None -> 1..depth; ``"1,3,6"`` or a sequence -> sorted unique, range-checked."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(1, depth + 1))
    if isinstance(spec, str):
        try:
            values = [int(p) for p in spec.split(",") if p.strip()]
        except ValueError as exc:
            raise ConfigError(f"exit depths must be integers or 'all', got {spec!r}") from exc
    else:
        values = [int(v) for v in spec]
    if not values:
        raise ConfigError("no exit depths given")
    for d in values:
        block_index(d, depth)
    return sorted(set(values))


def exit_features(
    backbone: VisionTransformer, images: torch.Tensor, exit_depths: Sequence[int]
) -> torch.Tensor:
    """CLS features after the shared final norm at each exit depth: ``[len(exit_depths), N, D]``.

    Runs only as many blocks as the deepest requested exit needs. Not normalised: training feeds
    these to the projectors; :func:`exit_embeddings` is the served definition.
    """
    depth = len(backbone.blocks)
    indices = [block_index(d, depth) for d in exit_depths]
    taken = sorted(set(indices))  # timm returns intermediates in block order
    outs = backbone.forward_intermediates(
        images,
        indices=taken,  # always a list: an int would mean "the last n blocks"
        norm=True,
        return_prefix_tokens=True,
        output_fmt="NLC",
        intermediates_only=True,
        stop_early=True,
    )
    cls = {i: prefix[:, 0] for i, (_, prefix) in zip(taken, outs, strict=True)}
    return torch.stack([cls[i] for i in indices])


def exit_embeddings(
    backbone: VisionTransformer, images: torch.Tensor, exit_depths: Sequence[int]
) -> torch.Tensor:
    """Embeddings (L2-normalised CLS after the final norm) at each exit depth: ``[E, N, D]``."""
    return F.normalize(exit_features(backbone, images, exit_depths), dim=-1)
