"""The paper's metrics with the shipped toy metric model: they must separate concepts and read captions."""

import numpy as np
import pytest

from cns_ray.errors import InputError
from cns_ray.eval import metrics
from cns_ray.eval.metric_model import load_metric_model
from cns_ray.world import concepts as wc
from cns_ray.world import render_scene
from cns_ray.world.scene import caption, sample_scenes


@pytest.fixture(scope="module")
def metric():
    return load_metric_model("toy")


@pytest.fixture(scope="module")
def refs():
    """Per concept: two disjoint reference sets (different seeds -> different contexts)."""
    return {c.name: (wc.reference_set(c, 6, seed=0)[0], wc.reference_set(c, 4, seed=1)[0]) for c in wc.CONCEPTS}


def test_a_real_reference_of_a_concept_ranks_above_other_concepts(metric, refs):
    names = list(refs)
    wrong = []
    for name in names:
        query = refs[name][1]  # unseen images of the concept
        scores = {other: metrics.image_alignment(metric, query, refs[other][0]) for other in names}
        if max(scores, key=scores.get) != name:
            wrong.append((name, max(scores, key=scores.get)))
    assert not wrong, f"concepts whose own references did not score highest: {wrong}"


def test_text_alignment_prefers_the_true_caption(metric):
    scenes = sample_scenes(30, seed=99)
    images = np.stack([render_scene(s) for s in scenes])
    caps = [caption(s) for s in scenes]
    acc = metrics.caption_rank_accuracy(metric, images, caps, k=10)
    assert acc >= 0.8, acc
    attrs = metrics.attribute_accuracy(metric, images, scenes)
    assert min(attrs.values()) >= 0.7, attrs
    assert metrics.text_alignment(metric, images[:1], caps[0]) > metrics.text_alignment(metric, images[:1], caps[1]) or \
        caps[0] == caps[1]


def test_noise_scores_below_references(metric, refs):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    real, ref = refs["heart"]
    assert metrics.image_alignment(metric, real, ref) > metrics.image_alignment(metric, noise, ref) + 0.2


def test_forgetting_and_input_checks():
    assert metrics.forgetting({"a": 0.8, "b": 0.6}, {"a": 0.5, "b": 0.6}) == pytest.approx(0.15)
    with pytest.raises(InputError, match="at least one concept"):
        metrics.forgetting({"a": 1.0}, {"b": 1.0})
    with pytest.raises(InputError, match="one per image"):
        metrics.text_alignment(None, np.zeros((2, 32, 32, 3), np.uint8), ["x"])


def test_metric_model_round_trips(metric, tmp_path):
    from cns_ray.eval.metric_model import ToyClip

    metric.save(tmp_path / "m")
    again = ToyClip.load(tmp_path / "m")
    img = wc.reference_set(wc.CONCEPTS[0], 2)[0]
    assert np.allclose(metric.embed_images(img).numpy(), again.embed_images(img).numpy(), atol=1e-6)
    assert np.allclose(metric.embed_texts(["a red circle"]).numpy(), again.embed_texts(["a red circle"]).numpy(), atol=1e-6)
