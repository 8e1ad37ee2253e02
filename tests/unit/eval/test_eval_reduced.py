"""The reduced `cns eval` (CI configuration): end to end in-process, every method and column, finite numbers."""

import json
import math

import pytest

from cns_ray.cli import main
from cns_ray.errors import ConfigError
from cns_ray.eval.config import METHODS, EvalConfig
from cns_ray.eval.report import COLUMNS

pytestmark = pytest.mark.slow


def test_reduced_eval_table_has_every_method_and_column(tmp_path):
    out = tmp_path / "eval"
    rc = main(["eval", "--local", "--sequences", "seq1", "--concepts", "2", "--steps", "2", "--n-gen", "1",
               "--gen-steps", "2", "--prompts", "1", "--train-seeds", "0", "--general-prompts", "1", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["table"]) == list(METHODS) and res["metric"] == "readout"
    for method, row in res["table"].items():
        for key, _ in COLUMNS:
            if key not in ("kept", "general_drop"):  # ratios over a gain that 2 steps may not make
                assert math.isfinite(row[key][0]), (method, key, row[key])
        assert row["bytes"][0] > 0 and row["seeds"][0] == 1
    table = (out / "table.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS)
    assert "ceiling: base, full caption" in table and "rendered truth" in table
    # naive stores every K/V weight; CNS only its concept neurons; token-only stores no weight
    assert res["table"]["naive"]["bytes"][0] > 2 * res["table"]["cns"]["bytes"][0] > 2 * res["table"]["token"]["bytes"][0]
    runs = {r["method"]: r for r in res["runs"] if r["kind"] == "unit"}
    assert runs["cns"]["concepts"] == ["rex", "mia"] and set(runs["cns"]["right_after"]) == {"rex", "mia"}
    refs = next(r for r in res["runs"] if r["kind"] == "references")
    assert refs["concepts"]["rex"]["truth"]["readout"] > 0.8  # the readout reads rendered truth
    assert refs["pairs"]["rex+mia"]["truth"]["placed"] == 1.0
    assert all((out / f"grid_{m}_seq1.png").stat().st_size > 0 for m in METHODS)
    assert (out / "curve.png").stat().st_size > 0


def test_base_only_reports_caption_ranking(tmp_path):
    out = tmp_path / "sanity"
    assert main(["eval", "--base-only", "--sanity-n", "10", "--gen-steps", "2", "--out", str(out)]) == 0
    r = json.loads((out / "base_sanity.json").read_text())
    for kind in ("generated", "rendered"):
        assert 0.0 <= r[kind]["caption_top1"] <= 1.0
    assert r["rendered"]["caption_top1"] >= 0.8  # the metric model reads the ground truth
    assert (out / "base_sanity.png").exists()


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="sequences"):
        EvalConfig(sequences=("nope",))
    with pytest.raises(ConfigError, match="methods"):
        EvalConfig(methods=("magic",))
    with pytest.raises(ConfigError, match="train_seeds"):
        EvalConfig(train_seeds=(1, 1))
