"""The procedural toy world: scenes, captions, rendering, datasets and held-out concepts (deterministic from seeds)."""

from cns_ray.world.dataset import WorldSample, world_images, world_samples
from cns_ray.world.render import render_scene
from cns_ray.world.scene import CLASS_WORD, Scene, caption, parse_caption, sample_scenes

__all__ = [
    "CLASS_WORD",
    "Scene",
    "WorldSample",
    "caption",
    "parse_caption",
    "render_scene",
    "sample_scenes",
    "world_images",
    "world_samples",
]
