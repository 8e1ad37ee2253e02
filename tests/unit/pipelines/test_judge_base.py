"""pipelines/judge_base.py on the shipped base: its per-value readings add up and agree with the readout's."""

import json

from pipelines import judge_base


def test_judges_the_shipped_base(capsys):
    assert judge_base.main(["tiny", "--n", "12", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 12 and set(r["readout"]) >= {"shape", "pattern", "marking", "colour"}
    for attr in ("pattern", "marking"):
        per = r[f"per_{attr}"]
        assert sum(v["n"] for v in per.values()) == 12
        right = sum(v["right"] * v["n"] for v in per.values()) / 12
        assert abs(right - r["readout"][attr]) < 0.02  # the per-value fractions are the head's accuracy, split
        assert all(sum(v["read_as"].values()) <= v["n"] for v in per.values())
    assert 0.0 <= r["palette"] <= 1.0
    sep = r["text_separation"]
    assert sep["red/green (colour)"] > 0 and all(v >= 0 for v in sep.values())


def test_refuses_an_unknown_base(capsys):
    assert judge_base.main(["no-such-base", "--n", "2"]) == 2
    assert "no-such-base" in capsys.readouterr().err


def test_denoising_from_light_noise_keeps_more_pattern_than_from_pure_noise():
    from cns_ray.eval.readout import load_readout
    from cns_ray.models import load_base_model

    r = judge_base.denoise_readout(load_base_model("tiny"), load_readout(), n=24)
    assert set(r) == set(judge_base.DENOISE_T)
    # at t=300 most of the rendered pattern survives in the noisy input (chance: pattern 0.2 among patterned
    # objects, marking 0.25); at 999 only the text is left, which can give no more than the image and the text
    assert r[300]["pattern"] > 0.5 and r[300]["marking"] > 0.5
    assert r[999]["pattern"] <= r[300]["pattern"] + 0.1 and r[999]["marking"] <= r[300]["marking"] + 0.1
