"""Which UNet modules are CNS targets, their stable names and shapes. The only place that decides it.

Targets are every cross-attention key and value projection (``attn2.to_k``, ``attn2.to_v``) of a diffusers
``UNet2DConditionModel``. A target's stable name is its module path in the UNet, e.g.
``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k``; weights are ``[out, in]`` with ``in`` the
text-embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cns_ray.errors import ModelLoadError

TARGET_SUFFIXES: tuple[str, ...] = ("attn2.to_k", "attn2.to_v")


@dataclass(frozen=True)
class Target:
    """One target layer: its stable name and weight shape ``[out, in]``."""

    name: str
    out_features: int
    in_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features


def is_target(name: str) -> bool:
    return any(name == s or name.endswith("." + s) for s in TARGET_SUFFIXES)


def find_target_modules(unet: nn.Module) -> dict[str, nn.Linear]:
    """Target ``nn.Linear`` modules of ``unet`` keyed by stable name, sorted by name."""
    found = {name: mod for name, mod in unet.named_modules() if is_target(name)}
    bad = [n for n, m in found.items() if not isinstance(m, nn.Linear)]
    if bad:
        raise TypeError(f"CNS targets must be nn.Linear, got {[type(found[n]).__name__ for n in bad]} at {bad}")
    if not found:
        raise ModelLoadError(
            f"no cross-attention K/V ({', '.join(TARGET_SUFFIXES)}) in {type(unet).__name__}: "
            "CNS needs a UNet with cross-attention (a UNet2DConditionModel)"
        )
    return dict(sorted(found.items()))


def target_specs(unet: nn.Module) -> dict[str, Target]:
    """Stable name -> :class:`Target` for every target of ``unet``."""
    return {n: Target(n, m.out_features, m.in_features) for n, m in find_target_modules(unet).items()}


def target_weights(unet: nn.Module) -> dict[str, torch.Tensor]:
    """Stable name -> the live weight tensor ``[out, in]`` (not a copy)."""
    return {n: m.weight for n, m in find_target_modules(unet).items()}


def total_target_weights(specs: dict[str, Target]) -> int:
    return sum(t.numel for t in specs.values())
