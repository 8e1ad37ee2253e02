"""Bundled data: calibration prompts and example concepts."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_path(*parts: str) -> Path:
    return Path(str(resources.files("cns_ray.data").joinpath(*parts)))


EXAMPLE_CLASS_WORDS = {"toy": "toy", "mug": "mug", "sculpture": "sculpture", "backpack": "backpack"}


def example_concepts() -> dict[str, tuple[Path, str]]:
    """Bundled example concepts (drawn by ``pipelines/make_examples.py``): name -> (image folder, class word)."""
    return {name: (data_path("examples", name), word) for name, word in EXAMPLE_CLASS_WORDS.items() if data_path("examples", name).is_dir()}
