"""The toy world: deterministic from a seed, captions that match the scene description, held-out concepts."""

import numpy as np
import pytest

from cns_ray.errors import InputError
from cns_ray.world import Scene, caption, parse_caption, render_scene, sample_scenes, world_samples
from cns_ray.world import concepts as wc
from cns_ray.world.render import SHAPE_MASKS
from cns_ray.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = world_samples(12, seed=3), world_samples(12, seed=3), world_samples(12, seed=4)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [s.scene for s in a] != [s.scene for s in c]


def test_caption_round_trips_to_the_scene_description():
    for s in sample_scenes(200, seed=1):
        words = parse_caption(caption(s))
        assert words == {k: getattr(s, k) for k in ("shape", "colour", "size", "texture", "position", "background")}


def test_sampling_covers_every_attribute_value():
    scenes = sample_scenes(600, seed=0)
    for attr, values in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES), ("texture", TEXTURES),
                         ("position", POSITIONS), ("background", BACKGROUNDS)):
        assert {getattr(s, attr) for s in scenes} == set(values), attr


def _scene(**kw):
    base = dict(shape="square", colour="red", size="large", texture="plain", position="center", background="grey")
    return Scene(**{**base, **kw})


def test_pixels_follow_the_description():
    img = render_scene(_scene()).astype(int)  # [32, 32, 3]
    assert tuple(img[16, 16]) == COLOURS["red"]
    assert tuple(img[0, 0]) == BACKGROUNDS["grey"]
    left = render_scene(_scene(size="small", position="left")).astype(int)
    right = render_scene(_scene(size="small", position="right")).astype(int)
    red = np.array(COLOURS["red"])
    cols_left = np.nonzero((np.abs(left - red).sum(-1) < 30).any(0))[0]
    cols_right = np.nonzero((np.abs(right - red).sum(-1) < 30).any(0))[0]
    assert cols_left.mean() < 14 < 18 < cols_right.mean()
    small = (np.abs(render_scene(_scene(size="small")).astype(int) - red).sum(-1) < 30).sum()
    large = (np.abs(img - red).sum(-1) < 30).sum()
    assert large > 2 * small


def test_shapes_differ_in_pixels():
    imgs = {s: render_scene(_scene(shape=s)) for s in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert np.abs(imgs[a].astype(int) - imgs[b].astype(int)).sum() > 0, (a, b)


def test_bad_scene_is_refused_with_the_allowed_values():
    with pytest.raises(InputError, match="colour='teal'.*blue"):
        _scene(colour="teal")
    with pytest.raises(InputError, match="not a world caption"):
        parse_caption("a photo of a dog")


def test_held_out_concepts_are_outside_the_world_and_deterministic():
    assert len(wc.CONCEPTS) >= 10
    assert len({c.shape for c in wc.CONCEPTS}) == len(wc.CONCEPTS)
    assert not {c.shape for c in wc.CONCEPTS} & set(SHAPES)
    assert all(c.shape in SHAPE_MASKS for c in wc.CONCEPTS)
    seq_names = [n for seq in wc.SEQUENCES.values() for n in seq]
    assert sorted(seq_names) == sorted(c.name for c in wc.CONCEPTS)
    c = wc.get_concept("heart")
    a_img, a_cap = wc.reference_set(c, 6, seed=0)
    b_img, b_cap = wc.reference_set(c, 6, seed=0)
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    assert all(c.token in cap for cap in a_cap)
    contexts = {(s.size, s.position, s.background) for s in wc.reference_scenes(c, 6, seed=0)}
    assert len(contexts) == 6  # varied contexts


def test_concept_caption_and_class_prompt():
    cap = wc.concept_caption("small", "<heart>", "left", "grey")
    assert cap == "a small <heart> shape at the left on a grey background"
    assert wc.class_prompt(cap, ["<heart>"]) == "a small shape at the left on a grey background"
    prompt, left, right = wc.multi_prompts("seq1")[0]
    assert wc.get_concept(left).token in prompt and wc.get_concept(right).token in prompt


def test_reference_folder_loads_in_the_learner(tmp_path):
    from cns_ray.learn.data import load_concept

    c = wc.get_concept("star")
    folder = wc.write_reference_folder(c, tmp_path / "star", n=4)
    data = load_concept(str(folder), c.class_word, c.token, 32, None, False)
    assert len(data) == 4 and all(c.token in t for t in data.train_captions)
