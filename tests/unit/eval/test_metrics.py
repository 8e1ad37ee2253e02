"""The paper's metrics with the shipped toy CLIP (v2 world): they separate concepts, read captions per attribute
and per object, and meet the ceilings recorded beside the model."""

import numpy as np
import pytest
import torch

from cns_ray.errors import InputError
from cns_ray.eval import metrics
from cns_ray.eval.metric_model import load_ceilings, load_metric_model
from cns_ray.world import concepts as wc
from cns_ray.world import render_scene
from cns_ray.world.scene import Look, Obj, Scene, caption, sample_scenes

def slack(p: float, n: int) -> float:
    """Allowed shortfall below a ceiling ``p`` for ``n`` tests: 3 binomial sd + 0.02 (ceilings are 2000 scenes)."""
    return 3 * (p * (1 - p) / n) ** 0.5 + 0.02


@pytest.fixture(scope="module")
def metric():
    return load_metric_model("toy")


@pytest.fixture(scope="module")
def refs():
    """Per concept: two disjoint reference sets (different seeds -> different contexts)."""
    return {c.name: (wc.reference_set(c, 6, seed=0)[0], wc.reference_set(c, 4, seed=1)[0]) for c in wc.CONCEPTS}


@pytest.fixture(scope="module")
def fresh():
    scenes = sample_scenes(200, seed=31_337, allow_held_out=True)  # neither a training nor the ceiling seed
    return scenes, np.stack([render_scene(s) for s in scenes])


def test_a_real_reference_of_a_concept_ranks_above_other_concepts(metric, refs):
    names = list(refs)
    wrong = []
    for name in names:
        query = refs[name][1]  # unseen images of the concept
        scores = {other: metrics.image_alignment(metric, query, refs[other][0]) for other in names}
        if max(scores, key=scores.get) != name:
            wrong.append((name, max(scores, key=scores.get)))
    assert not wrong, f"concepts whose own references did not score highest: {wrong}"


def test_the_toy_clip_meets_its_recorded_ceilings(metric, fresh):
    scenes, images = fresh
    ceilings = load_ceilings()["attributes"]
    assert ceilings["shape"] >= 0.95 and ceilings["position"] >= 0.95 and ceilings["pair.order"] >= 0.95, ceilings
    hits = metrics.attribute_hits(metric, images, scenes)
    low = {k: (round(float(np.mean(v)), 3), len(v), round(ceilings[k], 3)) for k, v in hits.items()
           if len(v) >= 20 and np.mean(v) < ceilings[k] - slack(ceilings[k], len(v))}
    assert not low, f"attributes (accuracy, tests, ceiling) below their recorded ceiling - 3 sd: {low}"


def test_text_alignment_prefers_the_true_caption(metric, fresh):
    scenes, images = fresh
    caps = [caption(s) for s in scenes]
    assert metrics.caption_rank_accuracy(metric, images, caps, k=10) >= 0.8
    better = [metrics.text_alignment(metric, images[i : i + 1], caps[i]) >
              metrics.text_alignment(metric, images[i : i + 1], caps[i + 1]) for i in range(20)]
    assert np.mean(better) >= 0.9


def test_a_class_word_prompt_is_closer_to_its_class(metric):
    """Captions without look words (the floor's prompts) are in distribution: they pick the class."""
    from cns_ray.world.scene import ALL_DROPPED, CLASSES

    scenes = sample_scenes(60, seed=2024, allow_held_out=True)
    scenes = [s for s in scenes if len(s.objects) == 1]
    images = np.stack([render_scene(s) for s in scenes])
    img = metric.embed_images(images)  # [N, D]
    right = []
    for i, s in enumerate(scenes):
        variants = [Scene((Obj(c, s.objects[0].look, s.objects[0].size, s.objects[0].position),), s.background)
                    for c in CLASSES]
        txt = metric.embed_texts([caption(v, ALL_DROPPED) for v in variants])  # [4, D]
        right.append(CLASSES[int((txt @ img[i]).argmax())] == s.objects[0].shape)
    assert np.mean(right) >= 0.85


def test_noise_scores_below_references(metric, refs):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    real, ref = refs["rex"]
    assert metrics.image_alignment(metric, real, ref) > metrics.image_alignment(metric, noise, ref) + 0.2


def test_attribute_tests_vary_one_attribute_of_one_object():
    one = Scene((Obj("circle", Look("red", "plain"), "large", "left"),), "grey")
    keys = [k for k, _ in metrics.attribute_tests(one)]
    # a plain, unmarked object has no pattern / second colour / marking test
    assert keys == ["object.shape", "object.colour", "object.size", "object.position", "background"]
    a = Obj("square", Look("blue", "striped", "white", "dot", "red"), "small", "left")
    b = Obj("cross", Look("green"), "small", "right")
    tests = dict(metrics.attribute_tests(Scene((a, b), "black")))
    assert {"left.pattern", "left.colour2", "left.marking", "left.marking_colour", "right.shape", "pair.order"} <= set(tests)
    assert "left.size" not in tests and "right.pattern" not in tests
    truth = caption(Scene((a, b), "black"))
    for key, cands in tests.items():
        assert caption(cands[0]) == truth and len({caption(c) for c in cands}) == len(cands), key
    swapped = caption(tests["pair.order"][1])
    assert swapped.startswith("a small plain green cross at the left and a small striped blue and white square")


class _BagOfWords:
    """A metric that cannot see word order: every swap ties."""

    def embed_images(self, images):
        return torch.ones(len(images), 3)

    def embed_texts(self, texts):
        return torch.ones(len(texts), 3)


def test_a_tie_is_a_miss():
    a, b = Obj("square", Look("blue"), "small", "left"), Obj("cross", Look("green"), "small", "right")
    acc = metrics.attribute_accuracy(_BagOfWords(), np.zeros((1, 32, 32, 3), np.uint8), [Scene((a, b), "black")])
    assert acc["pair.order"] == 0.0 and acc["shape"] == 0.0
    with pytest.raises(InputError, match="one scene per image"):
        metrics.attribute_accuracy(_BagOfWords(), np.zeros((2, 32, 32, 3), np.uint8), [Scene((a, b), "black")])


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
    text = ["a large red circle at the left on a grey background"]
    assert np.allclose(metric.embed_texts(text).numpy(), again.embed_texts(text).numpy(), atol=1e-6)
