"""The procedural toy world v2: scenes of known classes with composed looks, captions with attribute dropout,
one- and two-object scenes, rendering, datasets and held-out concept instances (deterministic from seeds)."""

from cns_ray.world.dataset import WorldSample, world_images, world_samples
from cns_ray.world.render import render_scene
from cns_ray.world.scene import CLASSES, Look, Obj, Scene, caption, parse_caption, sample_scenes

__all__ = [
    "CLASSES",
    "Look",
    "Obj",
    "Scene",
    "WorldSample",
    "caption",
    "parse_caption",
    "render_scene",
    "sample_scenes",
    "world_images",
    "world_samples",
]
