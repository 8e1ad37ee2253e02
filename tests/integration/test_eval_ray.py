"""`cns eval` on Ray: (method, sequence) units run as parallel Ray tasks and come back as one table."""

import json
import math

import pytest

from cns_ray.eval.config import EvalConfig
from cns_ray.eval.run import run_eval

pytestmark = pytest.mark.slow


def test_sequences_run_in_parallel_on_ray(ray_local, tmp_path):
    cfg = EvalConfig(sequences=("seq1", "seq2"), concepts_per_sequence=2, methods=("cns", "fusion"), steps=2, n_ref=4,
                     n_gen=1, prompts_per_concept=1, gen_steps=2, out_dir=str(tmp_path / "eval"))
    summary = run_eval(cfg, local=False, cpus_per_task=0.5)
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {(r["method"], r["sequence"]) for r in res["runs"]} == {(m, s) for m in cfg.methods for s in cfg.sequences}
    assert list(summary["table"]) == ["cns", "fusion"]
    assert all(math.isfinite(v) for row in summary["table"].values() for v in row.values())
    seq2 = next(r for r in res["runs"] if r["method"] == "cns" and r["sequence"] == "seq2")
    assert seq2["concepts"] == ["arrow", "crescent"]
