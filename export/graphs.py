"""The torch modules that become ONNX graphs: uint8 NHWC in, L2-normalised embeddings out.

Normalisation happens inside the graph, so a client only decodes, resizes and centre-crops.
``ExitGraph`` is a truncated copy of the backbone (blocks 1..d only), so its size and cost
grow with d; ``AllExitsGraph`` runs all L blocks once and returns every exit; a chain of
``SegmentGraph``s runs blocks a+1..b at a time on the hidden state, returning it and the exit
at depth b, so a batch can be run block by block and each request leave at its own depth.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from training.exits import block_index, exit_embeddings


class Normalise(nn.Module):
    """uint8 ``[N, S, S, 3]`` → float ``[N, 3, S, S]``: ÷255, then (x - mean) / std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # One multiply-add: (x/255 - mean)/std = (x - 255 mean) * 1/(255 std).
        self.register_buffer("shift", 255.0 * mean_t)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(self.scale.dtype)
        return (x - self.shift) * self.scale


class ExitGraph(nn.Module):
    """Embedding at one exit depth, from a backbone truncated after block ``exit_depth``."""

    def __init__(
        self,
        backbone: VisionTransformer,
        exit_depth: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.normalise = Normalise(mean, std)
        self.vit = copy.deepcopy(backbone)
        index = block_index(exit_depth, len(backbone.blocks))
        # Keep blocks 1..d and the shared final norm; drop the (empty) head and pooling.
        self.vit.prune_intermediate_layers(indices=[index], prune_norm=False, prune_head=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalise(images).to(self.vit.pos_embed.dtype)  # fp16 graphs compute in fp16
        tokens = self.vit.forward_features(x)  # final norm applied
        return F.normalize(tokens[:, 0].float(), dim=-1)  # CLS (prune_head reset pooling)


class AllExitsGraph(nn.Module):
    """Embeddings at every exit depth in one pass: ``[L, N, D]``."""

    def __init__(
        self, backbone: VisionTransformer, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.normalise = Normalise(mean, std)
        self.vit = copy.deepcopy(backbone)
        self.exit_depths = list(range(1, len(backbone.blocks) + 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalise(images).to(self.vit.pos_embed.dtype)
        return exit_embeddings(self.vit, x, self.exit_depths).float()


class SegmentGraph(nn.Module):
    """Blocks ``first``+1..``last`` on the hidden state (from the images when ``first`` is 0):
    returns the hidden state after block ``last`` and the embedding at exit depth ``last``."""

    def __init__(
        self,
        backbone: VisionTransformer,
        first: int,
        last: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.first, self.last = first, last
        self.vit = copy.deepcopy(backbone)  # the stem and norm live on it; blocks are sliced
        self.blocks = nn.Sequential(*self.vit.blocks[first:last])
        self.vit.blocks = nn.Sequential()  # only this segment's blocks are exported
        self.normalise = Normalise(mean, std)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """The tokens block 1 sees (timm's forward_features up to its blocks)."""
        x = self.normalise(images).to(self.vit.pos_embed.dtype)
        x = self.vit._pos_embed(self.vit.patch_embed(x))
        return self.vit.norm_pre(self.vit.patch_drop(x))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(hidden) if self.first == 0 else hidden
        x = self.blocks(x)
        return x, F.normalize(self.vit.norm(x)[:, 0].float(), dim=-1)
