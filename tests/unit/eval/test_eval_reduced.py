"""The reduced `cns eval` (CI configuration): end to end in-process, every method and column, finite numbers."""

import json
import math

import pytest

from cns_ray.cli import main
from cns_ray.errors import ConfigError
from cns_ray.eval.config import METHODS, EvalConfig
from cns_ray.eval.harness import COLUMNS

pytestmark = pytest.mark.slow


def test_reduced_eval_table_has_every_method_and_column(tmp_path):
    out = tmp_path / "eval"
    rc = main(["eval", "--local", "--sequences", "seq1", "--concepts", "2", "--steps", "2", "--n-gen", "1",
               "--gen-steps", "2", "--prompts", "1", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["table"]) == list(METHODS)
    for method, row in res["table"].items():
        for key, _ in COLUMNS:
            assert math.isfinite(row[key]), (method, key, row[key])
        assert row["bytes_per_concept"] > 0
        assert row["forgetting"] == pytest.approx(row["learned_image"] - row["single_image"], abs=1e-9)
    table = (out / "table.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS)
    # naive stores every K/V weight; CNS only its concept neurons
    assert res["table"]["naive"]["bytes_per_concept"] > 2 * res["table"]["cns"]["bytes_per_concept"]
    runs = {r["method"]: r for r in res["runs"]}
    assert runs["cns"]["concepts"] == ["heart", "star"] and set(runs["cns"]["right_after"]) == {"heart", "star"}
    assert all((out / f"grid_{m}_seq1.png").stat().st_size > 0 for m in METHODS)


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
