"""The toy world v2: deterministic from a seed, captions that invert to the scene (one and two objects, with
dropped words), pixels that follow the description, held-out concept instances."""

import numpy as np
import pytest

from cns_ray.errors import InputError
from cns_ray.world import Look, Obj, Scene, caption, parse_caption, render_scene, sample_scenes, world_samples
from cns_ray.world import concepts as wc
from cns_ray.world.render import object_region
from cns_ray.world.scene import (
    ALL_DROPPED,
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    MARKINGS,
    PATTERNS,
    Dropout,
    DropoutRates,
    all_looks,
    is_held_out,
    look_fields,
    sample_caption,
)


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = world_samples(12, seed=3), world_samples(12, seed=3), world_samples(12, seed=4)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [s.scene for s in a] != [s.scene for s in c]


def _expected(o: Obj, drop: Dropout) -> dict:
    d = {"size": o.size, "shape": o.shape, "position": o.position, **look_fields(o.look)}
    if drop.pattern:
        d.pop("pattern")
    if drop.colour:
        d.pop("colour"), d.pop("colour2", None)
    if drop.marking:
        d.pop("marking", None), d.pop("marking_colour", None)
    return d


@pytest.mark.parametrize("drop", [Dropout(), Dropout(True, False, False), Dropout(False, True, True), ALL_DROPPED])
def test_caption_round_trips_to_the_scene_one_and_two_objects(drop):
    scenes = sample_scenes(300, seed=1)
    assert {len(s.objects) for s in scenes} == {1, 2}
    for s in scenes:
        parsed = parse_caption(caption(s, drop))
        assert parsed["background"] == s.background
        assert parsed["objects"] == [_expected(o, drop) for o in s.objects]


def test_training_captions_drop_look_words_but_keep_the_class_word():
    rng = np.random.default_rng(0)
    scenes = sample_scenes(400, seed=2)
    caps = [sample_caption(s, rng, DropoutRates()) for s in scenes]
    kinds = {tuple(sorted(k for k in o if k in ("colour", "pattern", "marking"))) for c in caps
             for o in parse_caption(c)["objects"]}
    assert () in kinds and ("colour", "pattern") in kinds  # fully dropped and partly dropped both occur
    for s, c in zip(scenes, caps):
        assert [o["shape"] for o in parse_caption(c)["objects"]] == [o.shape for o in s.objects]


def test_world_covers_every_part_and_about_45_percent_two_object_scenes():
    scenes = sample_scenes(2000, seed=0)
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == set(CLASSES)
    assert {o.look.pattern for o in objs} == set(PATTERNS)
    assert {o.look.marking for o in objs} == set(MARKINGS)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    two = np.mean([len(s.objects) == 2 for s in scenes])
    assert 0.40 <= two <= 0.50


def test_held_out_instances_are_never_rendered_in_training():
    held = {(c.shape, c.look) for c in wc.CONCEPTS}
    objs = [o for s in sample_scenes(3000, seed=5) for o in s.objects]
    assert not any(is_held_out(o.shape, o.look) for o in objs)
    assert not {o.instance() for o in objs} & held
    assert all(is_held_out(c.shape, c.look) for c in wc.CONCEPTS)
    frac = np.mean([is_held_out(s, lk) for s in CLASSES for lk in all_looks()])
    assert 0.10 < frac < 0.15


def _scene(**kw):
    look = Look(kw.pop("colour", "red"), kw.pop("pattern", "plain"), kw.pop("colour2", None),
                kw.pop("marking", "none"), kw.pop("marking_colour", None))
    o = Obj(kw.pop("shape", "square"), look, kw.pop("size", "large"), kw.pop("position", "center"))
    return Scene((o,), kw.pop("background", "grey"))


def _count(img, colour, tol=30):
    return int((np.abs(img.astype(int) - np.array(COLOURS[colour])).sum(-1) < tol).sum())


def test_pixels_follow_the_description():
    img = render_scene(_scene())
    assert tuple(img[16, 16].astype(int)) == COLOURS["red"]
    assert tuple(img[0, 0].astype(int)) == BACKGROUNDS["grey"]
    # pattern: the second colour appears; marking: its colour appears, at the centre for a dot
    striped = render_scene(_scene(pattern="striped", colour2="blue"))
    assert _count(striped, "red") > 40 and _count(striped, "blue") > 40
    dot = render_scene(_scene(marking="dot", marking_colour="yellow"))
    assert tuple(dot[16, 16].astype(int)) == COLOURS["yellow"] and 20 < _count(dot, "yellow") < 60
    outline = render_scene(_scene(marking="outline", marking_colour="blue"))
    assert tuple(outline[16, 16].astype(int)) == COLOURS["red"] and _count(outline, "blue") > 40
    # two objects: the left one's colour is in the left half, the right one's in the right half
    pair = Scene((Obj("circle", Look("red"), "small", "left"), Obj("cross", Look("blue"), "small", "right")), "white")
    img = render_scene(pair)
    assert _count(img[:, :16], "red") > 40 and _count(img[:, 16:], "red") == 0
    assert _count(img[:, 16:], "blue") > 30 and _count(img[:, :16], "blue") == 0
    left, right = object_region(pair, 0), object_region(pair, 1)
    assert left[:, :16].sum() > 0.99 * left.sum() and right[:, 16:].sum() > 0.99 * right.sum()


def test_classes_differ_in_pixels():
    imgs = {s: render_scene(_scene(shape=s)).astype(int) for s in CLASSES}
    for a in CLASSES:
        for b in CLASSES:
            if a < b:
                assert np.abs(imgs[a] - imgs[b]).sum() > 0, (a, b)


def test_bad_scenes_and_captions_are_refused_with_the_allowed_values():
    with pytest.raises(InputError, match="colour='teal'.*blue"):
        _scene(colour="teal")
    with pytest.raises(InputError, match="needs a second colour"):
        _scene(pattern="striped")
    with pytest.raises(InputError, match="two-object scene"):
        Scene((Obj("circle", Look("red"), "large", "left"), Obj("circle", Look("red"), "small", "right")), "grey")
    with pytest.raises(InputError, match="not a world caption.*size at word 2, got .photo."):
        parse_caption("a photo of a dog")


def test_concepts_are_user_captioned_instances_with_floor_and_ceiling_prompts():
    assert len(wc.CONCEPTS) >= 18 and len({c.name for c in wc.CONCEPTS}) == len(wc.CONCEPTS)
    for seq in wc.SEQUENCES.values():
        assert 6 <= len(seq) <= 8
        classes = [wc.get_concept(n).shape for n in seq]
        assert len(set(classes)) < len(classes)  # a same-class pair in every sequence
    c = wc.get_concept("rex")
    a_img, a_cap, _ = wc.reference_set(c, 6, seed=0)
    b_img, b_cap, _ = wc.reference_set(c, 6, seed=0)
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    assert all(cap.count(c.token) == 1 and f"{c.token} {c.shape}" in cap for cap in a_cap)
    assert all(parse_caption(cap)["objects"][0]["subject"] == c.token for cap in a_cap)
    contexts = {(s.objects[0].size, s.objects[0].position, s.background) for s in wc.reference_scenes(c, 6, seed=0)}
    assert len(contexts) == 6
    prompt = wc.user_caption("small", c.token, c.shape, "left", "grey")
    assert wc.class_prompt(prompt, [c.token]) == "a small circle at the left on a grey background"
    full = wc.full_prompt(prompt, [c])
    assert parse_caption(full)["objects"][0] == {"size": "small", "shape": "circle", "position": "left",
                                                  **look_fields(c.look)}
    prompt, left, right, bg = wc.multi_prompts("seq1")[0]
    parsed = parse_caption(prompt)
    assert [o["subject"] for o in parsed["objects"]] == [wc.get_concept(left).token, wc.get_concept(right).token]


def test_library_concepts_are_held_out_and_distinct_from_the_named_ones():
    lib = wc.library_concepts(200, seed=0)
    assert len({(c.shape, c.look) for c in lib}) == 200
    assert all(is_held_out(c.shape, c.look) for c in lib)
    assert not {(c.shape, c.look) for c in lib} & {(c.shape, c.look) for c in wc.CONCEPTS}
    assert [c.look for c in wc.library_concepts(5, seed=0)] == [c.look for c in lib[:5]]


def test_reference_folder_loads_in_the_learner_with_one_token(tmp_path):
    from cns_ray.learn.data import load_concept

    c = wc.get_concept("mia")
    folder = wc.write_reference_folder(c, tmp_path / "mia", n=4)
    data = load_concept(str(folder), c.class_word, c.token, 32, None, False)
    assert len(data) == 4
    assert all(t.count(c.token) == 1 for t in data.train_captions)
    assert all(c.token not in s and c.shape in s for s in data.captions)


def test_pair_references_put_the_concept_beside_a_described_partner_on_both_sides(tmp_path):
    from cns_ray.learn.data import load_concept

    c = wc.get_concept("rex")
    imgs, caps, scenes = wc.reference_set(c, 6, seed=0, pairs=4)
    assert imgs.shape[0] == 10 and caps[:6] == wc.reference_set(c, 6, seed=0)[1]  # the one-object set unchanged
    sides = []
    for img, cap, scene in zip(imgs[6:], caps[6:], scenes[6:]):
        objs = parse_caption(cap)["objects"]
        k = next(i for i, o in enumerate(objs) if o.get("subject") == c.token)
        mine, other = objs[k], objs[1 - k]
        assert cap.count(c.token) == 1 and set(mine) == {"size", "subject", "shape", "position"}  # token, no look words
        assert other == {"size": "small", "shape": c.shape, "position": other["position"], **look_fields(scene.objects[1 - k].look)}
        assert scene.objects[k].look == c.look and scene.objects[1 - k].look.pattern == "plain"
        assert scene.objects[1 - k].look.colour not in {c.look.colour, c.look.colour2, c.look.marking_colour}
        assert not is_held_out(c.shape, scene.objects[1 - k].look)  # the partner is something the base draws
        assert np.array_equal(img, render_scene(scene, img.shape[0]))
        sides.append(mine["position"])
    assert sides == ["right", "left", "right", "left"]
    with pytest.raises(InputError, match=r"pairs=25 .*\[0, 24\]"):
        wc.reference_set(c, 6, pairs=25)
    folder = wc.write_reference_folder(c, tmp_path / "rex", n=2, pairs=2)
    data = load_concept(str(folder), c.class_word, c.token, 32, None, False)
    assert len(data) == 4 and all(t.count(c.token) == 1 for t in data.train_captions)
