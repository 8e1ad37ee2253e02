"""World datasets: (scene, caption, pixels) triples deterministic from a seed, as numpy or torch batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cns_ray.world.render import BASE_RESOLUTION, render_scene
from cns_ray.world.scene import FULL, Scene, WorldSpec, caption, sample_scenes


@dataclass
class WorldSample:
    scene: Scene
    caption: str  # the full caption (no words dropped)
    image: np.ndarray  # [H, W, 3] uint8


def world_samples(n: int, seed: int, resolution: int = BASE_RESOLUTION, spec: WorldSpec = WorldSpec(),
                  allow_held_out: bool = False) -> list[WorldSample]:
    """``n`` rendered training scenes with full captions, deterministic from ``seed``."""
    return [WorldSample(s, caption(s, FULL), render_scene(s, resolution))
            for s in sample_scenes(n, seed, spec, allow_held_out)]


def to_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]."""
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def world_images(n: int, seed: int, resolution: int = BASE_RESOLUTION) -> tuple[torch.Tensor, list[str]]:
    """Images [N, 3, H, W] in [-1, 1] and their full captions."""
    samples = world_samples(n, seed, resolution)
    return to_tensor([s.image for s in samples]), [s.caption for s in samples]
