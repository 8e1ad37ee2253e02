"""Base-model sanity v2 without a base model: its readings of rendered truth are the ceilings, its table has a row
per slot attribute."""

import numpy as np
import pytest

from cns_ray.eval.metric_model import load_metric_model
from cns_ray.eval.readout import load_readout
from cns_ray.eval.sanity import SANITY_SEED, SANITY_SPEC, format_sanity, palette_by_slot, read_all
from cns_ray.world.render import render_scene
from cns_ray.world.scene import caption, sample_scenes


@pytest.fixture(scope="module")
def truth():
    scenes = sample_scenes(30, seed=SANITY_SEED, spec=SANITY_SPEC)
    return scenes, np.stack([render_scene(s) for s in scenes])


def test_rendered_truth_reads_near_the_ceilings(truth):
    scenes, images = truth
    r = read_all(images, scenes, [caption(s) for s in scenes], load_metric_model("toy"), load_readout(), 10, 0)
    assert r["caption_top1"] >= 0.8
    assert np.mean(list(r["readout"].values())) >= 0.9, r["readout"]
    assert {"object.shape", "left.shape", "right.shape", "pair.order", "object.position"} <= set(r["attributes"])
    assert set(r["palette"]) == {"object", "left", "right"} and min(r["palette"].values()) >= 0.9

    table = format_sanity({"n": len(scenes), "k": 10, "chance": 0.1, "generated": r, "rendered": r,
                           "two_object": [len(s.objects) == 2 for s in scenes]})
    for row in ("| object.shape |", "| left.marking_colour |", "| pair.order |", "| count |", "palette recall"):
        assert row in table, row


def test_palette_by_slot_names_the_slots(truth):
    scenes, images = truth
    one = [i for i, s in enumerate(scenes) if len(s.objects) == 1][:3]
    assert set(palette_by_slot(images[one], [scenes[i] for i in one])) == {"object"}


def test_readout_only_skips_the_toy_clip_and_says_so(truth):
    scenes, images = truth
    r = read_all(images, scenes, [caption(s) for s in scenes], None, load_readout(), 10, 0, clip=False)
    assert r["caption_top1"] is None and r["attributes"] == {}
    assert np.mean(list(r["readout"].values())) >= 0.9 and min(r["palette"].values()) >= 0.9
    table = format_sanity({"n": len(scenes), "k": 10, "chance": 0.1, "generated": r, "rendered": r,
                           "two_object": [len(s.objects) == 2 for s in scenes]})
    assert "toy CLIP not run" in table and "| object.pattern |" in table and "| pair.order |" not in table
