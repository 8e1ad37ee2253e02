"""The shipped base model trained on the toy world (cns_ray/data/base/tiny-world): loads offline, keeps its
recorded base_id, and regenerates its recorded reference images within tolerance."""

import json

import numpy as np
import pytest

from cns_ray.data import data_path

FOLDER = data_path("base", "tiny-world")

pytestmark = pytest.mark.skipif(not (FOLDER / "reference.json").exists(), reason="tiny-world weights not shipped")


@pytest.fixture(scope="module")
def reference():
    return json.loads((FOLDER / "reference.json").read_text())


def test_loads_offline_with_its_recorded_base_id(reference):
    import cns_ray.models.patch_vae  # noqa: F401
    from cns_ray.models import load_base_model

    base = load_base_model(str(FOLDER))
    assert base.base_id == reference["base_id"]
    assert base.resolution == 32
    assert base.pipeline.scheduler.config.prediction_type == "sample"


def test_generations_match_recorded_references(reference):
    from PIL import Image

    from pipelines.train_base import REFERENCE_PROMPTS, reference_images

    from world_base import default_base_world

    if default_base_world() >= 2:  # a v2 base records train_base's own prompts (a v1 base: v1 captions)
        assert list(REFERENCE_PROMPTS) == reference["prompts"]
    _, imgs = reference_images(FOLDER, reference["prompts"])
    for i, img in enumerate(imgs):
        want = np.asarray(Image.open(FOLDER / f"reference_{i}.png").convert("RGB")).astype(int)
        diff = np.abs(img.astype(int) - want)
        assert diff.mean() < 2.0 and diff.max() < 40, (i, diff.mean(), diff.max())


def test_loads_by_its_built_in_names(reference, tiny_base, tiny_random):
    """``tiny`` (the default, also config.DEFAULT_BASE_MODEL) and its alias ``tiny-world`` are this folder, one
    base_id; ``tiny-random`` is another model."""
    from cns_ray.config import DEFAULT_BASE_MODEL
    from cns_ray.models import TINY, TINY_RANDOM, TINY_WORLD, load_base_model

    assert (TINY, TINY_WORLD, TINY_RANDOM) == ("tiny", "tiny-world", "tiny-random")
    assert DEFAULT_BASE_MODEL == TINY
    assert load_base_model().base_id == reference["base_id"]  # the default spec
    alias = load_base_model(TINY_WORLD)
    assert tiny_base.source == TINY
    assert tiny_base.base_id == alias.base_id == reference["base_id"]
    assert tiny_base.folder == alias.folder == FOLDER
    assert tiny_random.source == TINY_RANDOM
    assert tiny_random.base_id != reference["base_id"]
