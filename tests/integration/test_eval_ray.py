"""`cns eval` on Ray: the references unit and every (method, sequence, seed) unit run as parallel Ray tasks and come
back as one table with floors, ceilings, mean +- sd over seeds and a forgetting curve."""

import json
import math
from dataclasses import replace

import pytest

from cns_ray.eval.config import EvalConfig
from cns_ray.eval.run import run_eval

pytestmark = pytest.mark.slow


def test_units_run_on_ray_and_come_back_as_one_table(ray_local, tmp_path):
    cfg = EvalConfig(sequences=("seq1", "seq2"), concepts_per_sequence=2, methods=("cns", "fusion"), steps=2, n_ref=4,
                     n_gen=1, prompts_per_concept=1, gen_steps=2, train_seeds=(0, 1), general_prompts=1,
                     out_dir=str(tmp_path / "eval"))
    summary = run_eval(cfg, local=False, cpus_per_task=0.5)
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    units = [r for r in res["runs"] if r["kind"] == "unit"]
    assert {(r["method"], r["sequence"], r["seed"]) for r in units} == \
        {(m, s, seed) for m in cfg.methods for s in cfg.sequences for seed in cfg.train_seeds}
    refs = next(r for r in res["runs"] if r["kind"] == "references")
    assert set(refs["concepts"]) == {"rex", "mia", "bo", "lu"} and set(refs["pairs"]) == {"rex+mia", "bo+lu"}
    assert list(summary["table"]) == ["cns", "fusion"]
    row = summary["table"]["cns"]
    assert row["seeds"][0] == 2 and all(math.isfinite(v) for v in row["after"] + row["end"])
    assert math.isfinite(row["forgetting"][0])  # 2 concepts per sequence: the first is measured after the second
    seq2 = next(r for r in units if r["method"] == "cns" and r["sequence"] == "seq2")
    assert seq2["concepts"] == ["bo", "lu"] and len(seq2["first_curve"]) == 2
    assert (tmp_path / "eval" / "curve.png").stat().st_size > 1000
    assert "floor: base, class word" in summary["markdown"] and "±" in summary["markdown"]

    # resumable: the units are kept; a re-run with one more seed runs only that seed's units, and a changed config
    # (another step count) shares none of them
    said = []
    again = run_eval(replace(cfg, train_seeds=(0, 1, 2)), local=True, say=said.append)
    assert "1 already done" not in said[0] and f"{1 + len(units)} already done" in said[0], said[0]
    ran = [s for s in said if s.strip().startswith("done ")]
    assert sorted(s.split()[1] for s in ran) == sorted(f"{m}/{q}/2" for m in cfg.methods for q in cfg.sequences)
    assert again["table"]["cns"]["seeds"][0] == 3
    said.clear()
    run_eval(replace(cfg, steps=3, concepts_per_sequence=1, train_seeds=(0,), methods=("cns",)), local=True, say=said.append)
    assert "0 already done" in said[0], said[0]
