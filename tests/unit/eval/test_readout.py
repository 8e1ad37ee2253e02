"""The shipped per-object readout on fresh rendered v2 scenes: it meets its recorded ceilings and reads instances."""

import numpy as np
import pytest

from cns_ray.errors import InputError, ModelLoadError
from cns_ray.eval.readout import SLOTS, Readout, heads, load_readout, scene_labels, scene_values
from cns_ray.world import concepts as wc
from cns_ray.world.render import render_scene
from cns_ray.world.scene import sample_scenes

MARGIN = 0.07
"""Binomial slack: a head seen on ~100 of 200 scenes at p = 0.95 has sd 0.022."""


@pytest.fixture(scope="module")
def readout():
    return load_readout()


@pytest.fixture(scope="module")
def fresh():
    scenes = sample_scenes(200, seed=31_337, allow_held_out=True)  # neither a training nor the ceiling seed
    return scenes, np.stack([render_scene(s) for s in scenes])


def test_the_readout_meets_its_recorded_ceilings(readout, fresh):
    scenes, images = fresh
    ceilings = readout.ceilings["accuracy"]
    assert set(ceilings) == {name for name, _ in heads()}
    acc = readout.accuracy(images, scenes)
    low = {k: (round(v, 3), ceilings[k]) for k, v in acc.items() if v < ceilings[k] - MARGIN}
    assert not low, f"heads below their recorded ceiling - {MARGIN}: {low}"


def test_read_gives_per_object_dicts(readout, fresh):
    scenes, images = fresh
    out = readout.read(images[:20])
    for r, s in zip(out, scenes[:20]):
        assert set(r) == {"count", "background", "objects"} and len(r["objects"]) == r["count"]
        if r["count"] == 1:
            assert {"size", "position"} <= set(r["objects"][0])
    right = [r["count"] == len(s.objects) and r["background"] == s.background for r, s in zip(out, scenes[:20])]
    assert np.mean(right) >= 0.9


@pytest.mark.parametrize("name", ["rex", "kit", "tam", "ada"])
def test_instance_match_knows_a_concept_from_another(readout, name):
    concept = wc.get_concept(name)
    other = next(c for c in wc.CONCEPTS if c.shape != concept.shape and c.look.colour != concept.look.colour)
    images = wc.reference_set(concept, 12, seed=0)[0]
    own, alien = readout.instance_match(images, concept, "object"), readout.instance_match(images, other, "object")
    assert own.attributes >= 0.9 and own.exact >= 0.6, own
    assert alien.attributes <= 0.5 and alien.exact == 0.0, alien


def test_instance_match_reads_the_slots_of_a_two_object_image(readout):
    left, right = wc.get_concept("rex"), wc.get_concept("ada")
    images = np.stack([render_scene(wc.pair_scene(left, right, bg)) for bg in ("white", "black", "grey", "brown")])
    assert readout.instance_match(images, left, "left").attributes >= 0.9
    assert readout.instance_match(images, right, "right").attributes >= 0.9
    assert readout.instance_match(images, left, "right").attributes <= 0.5
    assert readout.instance_match(images, (left.shape, left.look), "left").n == 4


def test_labels_cover_exactly_the_heads_of_a_scene():
    scenes = sample_scenes(40, seed=5)
    assert {len(s.objects) for s in scenes} == {1, 2}
    labels = scene_labels(scenes)  # [N, H]
    for s, row in zip(scenes, labels):
        # count + background; 6 look + size + position for one object, 6 look per object for two
        assert int((row >= 0).sum()) == len(scene_values(s)) == (2 + 8 if len(s.objects) == 1 else 2 + 12)


def test_round_trip_and_errors(readout, fresh, tmp_path):
    _, images = fresh
    readout.save(tmp_path / "r", readout.ceilings)
    again = Readout.load(tmp_path / "r")
    a, b = readout.probabilities(images[:4]), again.probabilities(images[:4])
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a) and again.ceilings == readout.ceilings
    with pytest.raises(InputError, match="slot"):
        readout.instance_match(images[:1], wc.CONCEPTS[0], "middle")
    with pytest.raises(InputError, match="uint8"):
        readout.read(images[:1].astype(np.float64))
    with pytest.raises(ModelLoadError, match="train_readout"):
        Readout.load(tmp_path / "nothing")
    assert SLOTS == ("object", "left", "right")
