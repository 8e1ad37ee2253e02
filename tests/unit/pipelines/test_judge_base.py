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
