"""The exact pixel-colour check on rendered truth: the right concept's palette is all there, another's is not."""

import numpy as np
import pytest

from cns_ray.errors import InputError
from cns_ray.eval.pixels import PixelTolerance, palette, palette_score, palette_scores
from cns_ray.world import concepts as wc
from cns_ray.world.render import render_scene
from cns_ray.world.scene import BACKGROUNDS, Look


def _disjoint_pairs():
    """(concept, another concept sharing none of its palette colours), one per concept that has one."""
    out = []
    for a in wc.CONCEPTS:
        others = [b for b in wc.CONCEPTS if not set(palette(a)) & set(palette(b))]
        if others:
            out.append((a, others[0]))
    return out


@pytest.mark.parametrize("concept", wc.CONCEPTS, ids=lambda c: c.name)
def test_a_concept_rendered_in_every_context_holds_its_palette(concept):
    images = wc.reference_set(concept, 24, seed=0)[0]  # every size x position x background
    s = palette_scores(images, concept)
    assert s["recall"] == 1.0 and s["full"] == 1.0, s
    assert s["precision"] >= 0.9, s


@pytest.mark.parametrize("a,b", _disjoint_pairs()[:6], ids=lambda c: c.name)
def test_another_concept_of_other_colours_scores_low(a, b):
    images = wc.reference_set(a, 6, seed=0)[0]
    s = palette_scores(images, b)
    assert s["recall"] <= 0.34 and s["full"] == 0.0, s
    assert s["precision"] <= 0.15, s


@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_two_object_images_are_scored_per_half(background):
    left, right = wc.get_concept("rex"), wc.get_concept("ada")  # red/yellow/green vs blue/green
    img = render_scene(wc.pair_scene(left, right, background))
    assert palette_score(img, left, "left").recall == 1.0
    assert palette_score(img, right, "right").recall == 1.0
    assert palette_score(img, left, "right").recall < 1.0  # no red, no yellow on the right
    assert palette_score(img, right, "left").recall < 1.0  # no blue on the left
    assert palette_score(img, left, "left", background=background).recall == 1.0


def test_background_only_and_white_on_white():
    blank = np.empty((32, 32, 3), np.uint8)
    blank[...] = BACKGROUNDS["grey"]
    s = palette_score(blank, wc.get_concept("rex"))
    assert s.recall == 0.0 and s.object_pixels == 0 and s.precision == 0.0
    tam = wc.get_concept("tam")  # red split white, yellow outline
    img = render_scene(wc.concept_scene(tam, "large", "center", "white"))
    s = palette_score(img, tam)
    assert s.unmeasurable == ("white",) and s.recall == 1.0 and set(s.counts) == {"red", "yellow"}


def test_palette_and_input_checks():
    assert palette(Look("red", "striped", "blue", "dot", "blue")) == ("red", "blue")
    assert palette(("circle", Look("green"))) == ("green",)
    with pytest.raises(InputError, match="region"):
        palette_score(np.zeros((32, 32, 3), np.uint8), Look("red"), "top")
    with pytest.raises(InputError, match="uint8"):
        palette_score(np.zeros((32, 32, 3), np.float32), Look("red"))
    with pytest.raises(InputError, match="background"):
        palette_score(np.zeros((32, 32, 3), np.uint8), Look("red"), background="pink")
    with pytest.raises(InputError, match="tol"):
        PixelTolerance(tol=0)
