"""Which toy world the shipped default base was trained on, and a skip marker for tests that need world v2."""

import pytest


def default_base_world() -> int:
    """The toy-world version the shipped default base was trained on (training.json's ``world``; 1 before v2)."""
    import json

    from cns_ray.data import data_path

    meta = data_path("base", "tiny-world", "training.json")
    return int(json.loads(meta.read_text()).get("world", 1)) if meta.exists() else 0


needs_world_v2_base = pytest.mark.skipif(
    default_base_world() < 2,
    reason="asserts what a base trained on toy world v2 draws; the shipped default base is not one yet "
           "(python -m pipelines.train_base; docs/toy-world.md)",
)
