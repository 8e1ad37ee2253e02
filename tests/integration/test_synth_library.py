"""Zero-shot synthesis end to end on real parts: the library built by Ray tasks into the store's reserved namespace
(resumable), a synthesizer trained on it, and ``cns synthesize`` committing a concept (or refusing bad input with
nothing committed). A handful of instances with a few steps each: the quick path, not the shipped library."""

from __future__ import annotations

import json

import pytest
import torch

from cns_ray.cli import main as cns


@pytest.fixture(scope="module")
def built(ray_local, tiny_base, tmp_path_factory):
    from cns_ray.synth.build import LibraryConfig, build_library
    from cns_ray.synth.library import ConceptLibrary, library_arrays
    from cns_ray.synth.model import SynthConfig
    from cns_ray.synth.synthesizer import Synthesizer

    root = str(tmp_path_factory.mktemp("synth-store"))
    seen = []
    cfg = LibraryConfig(n=3, steps=3, n_images=2, workers=2, cpus_per_task=0.5)
    first = build_library(root, "tiny", cfg, lambda done, total, e, s: seen.append((done, total, e.name)))
    lib = ConceptLibrary(root, tiny_base.base_id)
    entries, x, cond, coords = library_arrays(tiny_base, lib)
    synth = Synthesizer.fit(x, cond, coords, tiny_base.base_id,
                            SynthConfig(pca_dim=2, z_dim=2, hidden=16, vae_steps=50, flow_steps=50), {"metric": "toy"})
    folder = synth.save(tmp_path_factory.mktemp("synth") / "s")
    return {"root": root, "first": first, "seen": seen, "lib": lib, "cfg": cfg, "folder": str(folder), "x": x}


def test_library_is_built_by_tasks_into_a_reserved_namespace(built, tiny_base):
    from cns_ray.store import ConceptStore
    from cns_ray.config import StoreConfig

    first, lib = built["first"], built["lib"]
    assert first["learned"] == 3 and first["skipped"] == 0 and first["entries"] == 3
    assert sorted(n for _, _, n in built["seen"]) == ["lib0000", "lib0001", "lib0002"]
    assert [d for d, _, _ in built["seen"]] == [1, 2, 3]
    entries = lib.entries()
    for e in entries.values():
        assert e.base_id == tiny_base.base_id and e.version == 1 and e.steps == 3 and e.nnz > 0
        assert abs(float(torch.tensor(e.embedding).norm()) - 1.0) < 1e-4 and len(e.embedding) == 128
    assert lib.uri.endswith(f"library/{tiny_base.base_id}")
    user_store = ConceptStore(StoreConfig(uri=built["root"]))
    assert user_store.list_tenants() == []  # no user sees the library
    assert user_store.verify() == []  # and the layout knows the namespace


def test_a_rerun_skips_finished_entries_and_recovers_unrecorded_ones(built, tiny_base):
    from cns_ray.synth.build import build_library
    from cns_ray.synth.library import MANIFEST

    lib = built["lib"]
    again = build_library(built["root"], "tiny", built["cfg"])
    assert again["learned"] == 0 and again["skipped"] == 3
    m = json.loads(lib.store.backend.get(MANIFEST))
    del m["entries"]["lib0001"]  # a driver killed after the task's commit, before the manifest update
    lib.store.backend.put(MANIFEST, json.dumps(m).encode())
    third = build_library(built["root"], "tiny", built["cfg"])
    assert third["learned"] == 0 and third["recovered"] == 1 and third["entries"] == 3
    assert lib.store.head("lib0001") == 1  # not learned a second time


def test_a_library_is_not_resumed_at_another_reg_lambda(built):
    from dataclasses import replace

    from cns_ray.errors import ConfigError
    from cns_ray.synth.build import build_library

    assert {e.extra["reg_lambda"] for e in built["lib"].entries().values()} == {1.0}
    with pytest.raises(ConfigError, match=r"reg_lambda=\[1.0\], not 0.01.*another store"):
        build_library(built["root"], "tiny", replace(built["cfg"], reg_lambda=0.01, n=4))
    assert len(built["lib"].entries()) == 3  # nothing learned


def test_a_manifest_of_another_base_is_refused(built, tiny_base):
    from cns_ray.errors import BaseMismatchError
    from cns_ray.synth.library import MANIFEST, ConceptLibrary

    lib = built["lib"]
    raw = lib.store.backend.get(MANIFEST)
    m = json.loads(raw)
    m["entries"]["lib0000"]["base_id"] = "0123456789abcdef"
    lib.store.backend.put(MANIFEST, json.dumps(m).encode())
    try:
        with pytest.raises(BaseMismatchError, match="learned on base_id '0123456789abcdef'"):
            ConceptLibrary(built["root"], tiny_base.base_id).entries()
    finally:
        lib.store.backend.put(MANIFEST, raw)


def _folder(tmp_path, name="mia"):
    from cns_ray.world import concepts as wc

    return str(wc.write_reference_folder(wc.get_concept(name), tmp_path / name, n=3))


def test_cns_synthesize_commits_a_synthesized_concept_that_serves(built, tiny_base, tmp_path, capsys):
    from cns_ray.config import StoreConfig
    from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images, weights_digest
    from cns_ray.store import ConceptStore

    store_dir = str(tmp_path / "user")
    args = ["synthesize", "--store", store_dir, "--tenant", "acme", "--concept", "mia", "--images", _folder(tmp_path),
            "--class-word", "square", "--synthesizer", built["folder"], "--json"]
    assert cns(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["version"] == 1 and out["refine_steps"] == 0 and out["landing"] == "cns"
    store = ConceptStore(StoreConfig(uri=store_dir))
    state = store.load("acme", shapes=tiny_base.target_shapes(), base_id=tiny_base.base_id)
    rec = state.concept("mia")
    assert rec.method == "synthesized" and state.delta.nnz == rec.nnz > 0 and "<mia>" in state.tokens
    assert rec.stats["synthesis"]["entries_with_values"] > 0
    # the same seed gives the same state; the refine path learns on top of it
    assert cns([*args[:6], "mia2", *args[7:-1], "--refine-steps", "2"]) == 0
    refined = store.load("acme")
    assert [c.name for c in refined.concepts] == ["mia", "mia2"] and refined.concept("mia2").stats["synthesis"]["refine_steps"] == 2
    before = weights_digest(tiny_base)
    served = ServedTenant.from_state(refined, "cpu", torch.float32)
    png = generate_images(tiny_base, tiny_base.target_weights(), served,
                          GenerationRequest(prompt="a large <mia> square at the center on a grey background", steps=2,
                                            guidance_scale=4.0, seed=0))[0]
    assert png[:4] == b"\x89PNG" and weights_digest(tiny_base) == before


def test_cns_synthesize_from_the_library_lands_its_nearest_entry_and_refuses_a_missing_library(built, tiny_base,
                                                                                                tmp_path, capsys):
    from cns_ray.config import StoreConfig
    from cns_ray.store import ConceptStore
    from cns_ray.synth.coords import class_word_embedding

    store_dir = str(tmp_path / "user")
    args = ["synthesize", "--store", store_dir, "--tenant", "acme", "--images", _folder(tmp_path), "--class-word",
            "square", "--synthesizer", built["folder"], "--json"]
    assert cns([*args, "--concept", "mia", "--source", "nearest", "--library", built["root"]]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["version"] == 1 and out["source"] == "nearest"
    store = ConceptStore(StoreConfig(uri=store_dir))
    state = store.load("acme", shapes=tiny_base.target_shapes(), base_id=tiny_base.base_id)
    assert state.concept("mia").stats["synthesis"]["source"] == "nearest"
    x = built["x"]  # [N, D] the library's state vectors: the token offset is their last block
    offset = state.tokens["<mia>"].float() - class_word_embedding(tiny_base, "square")  # [T]
    gaps = [float((offset - x[i, -offset.numel():]).abs().max()) for i in range(len(x))]
    assert min(gaps) < 1e-4 < max(gaps), gaps  # exactly one library entry's token, not a sample
    assert cns([*args, "--concept", "mia2", "--source", "blend", "--library", built["root"]]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["source"] == "blend"
    # the library defaults to --store, which holds none: refused with the fix, nothing committed
    assert cns([*args, "--concept", "mia3", "--source", "blend"]) == 2
    err = capsys.readouterr().err
    assert "0 finished entries" in err and "pipelines.build_library" in err and "--source flow" in err, err
    assert store.head("acme") == 2


def test_train_synth_trains_on_the_library_or_its_first_entries(built, tmp_path, capsys):
    from pipelines import train_synth

    small = ["--store", built["root"], "--pca-dim", "2", "--z-dim", "2", "--hidden", "16", "--vae-steps", "20",
             "--flow-steps", "20", "--val", "0", "--views", "0"]
    assert train_synth.main([*small, "--out", str(tmp_path / "all")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["library_size"] == 3
    assert train_synth.main([*small, "--out", str(tmp_path / "two"), "--limit", "2", "--retrieval-k", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from cns_ray.synth.synthesizer import Synthesizer

    two = Synthesizer.load(out["out"])
    assert out["library_size"] == 2 and two.meta["library_size"] == 2 and two.mem_cond.shape[0] == 2
    assert train_synth.main([*small, "--out", str(tmp_path / "bad"), "--limit", "-1"]) == 2
    assert "--limit -1 must be >= 0" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("case", ["empty-folder", "unknown-base", "bad-name", "other-base-synth", "bad-landing-steps"])
def test_cns_synthesize_refuses_bad_input_and_commits_nothing(built, tmp_path, capsys, case):
    from cns_ray.config import StoreConfig
    from cns_ray.store import ConceptStore
    from cns_ray.synth.synthesizer import META

    store_dir = str(tmp_path / "user")
    images, base, concept, synth = _folder(tmp_path), "tiny", "mia", built["folder"]
    extra = []
    if case == "empty-folder":
        (tmp_path / "empty").mkdir()
        images, want = str(tmp_path / "empty"), "has 0 images"
    elif case == "unknown-base":
        base, want = str(tmp_path / "no-such-base"), "no-such-base"
    elif case == "bad-name":
        concept, want = "../etc", "path separator"
    elif case == "other-base-synth":
        import shutil

        other = tmp_path / "other-synth"
        shutil.copytree(synth, other)
        meta = json.loads((other / META).read_text())
        meta["base_id"] = "0123456789abcdef"
        (other / META).write_text(json.dumps(meta))
        synth, want = str(other), "rebuild it for this base"
    else:
        extra, want = ["--refine-steps", "-1"], "refine_steps=-1"
    rc = cns(["synthesize", "--store", store_dir, "--base-model", base, "--tenant", "acme", "--concept", concept,
              "--images", images, "--class-word", "square", "--synthesizer", synth, *extra])
    err = capsys.readouterr().err
    assert rc == 2 and want in err, err
    assert ConceptStore(StoreConfig(uri=store_dir)).list_tenants() == []


def test_eval_synth_scores_every_method_against_its_floor_and_upper_bound(built, tmp_path, capsys):
    """``python -m pipelines.eval_synth`` on the quick library, in this process: one row per (concept, method,
    seed), the nearest entry named, gain kept = (method - floor) / (cns - floor) from those rows, the table written;
    a library instance given as a held-out concept is refused with nothing written."""
    from pipelines.eval_synth import main as eval_synth

    out = tmp_path / "eval"
    methods = ["floor", "synthesized", "nearest", "blend", "cns", "refine"]
    common = ["--store", built["root"], "--synthesizer", built["folder"], "--seeds", "1", "--cns-steps", "2",
              "--refine-steps", "1", "--images-per-prompt", "1", "--workers", "0", "--out", str(out)]
    assert eval_synth([*common, "--concepts", "mia", "--methods", *methods]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert len(res["rows"]) == len(methods) and set(rows) == set(methods)
    assert all(r["concept"] == "mia" and r["seed"] == 0 for r in rows.values())
    assert rows["nearest"]["nearest"] in {"lib0000", "lib0001", "lib0002"}
    assert rows["floor"]["seconds"] == 0.0 and rows["cns"]["seconds"] > 0 and rows["synthesized"]["entries"] > 0
    for r in rows.values():
        assert -1.0 <= r["clip"] <= 1.0 and 0.0 <= r["readout"] <= 1.0 and 0.0 <= r["pixel"] <= 1.0, r
    s, floor, cns_ = res["summary"], rows["floor"]["clip"], rows["cns"]["clip"]
    if abs(cns_ - floor) > 1e-9:
        assert s["synthesized"]["clip_gain_kept"] == pytest.approx((rows["synthesized"]["clip"] - floor) / (cns_ - floor))
    assert res["meta"]["library_size"] == 3 and res["meta"]["base_id"] == built["lib"].base_id
    table = (out / "table.md").read_text()
    assert "| class-word base (floor) |" in table and "| trained CNS, 2 steps (upper bound) |" in table
    assert "| synthesized + 1 CNS steps |" in table

    capsys.readouterr()
    bad = tmp_path / "bad"
    assert eval_synth([*common[:-1], str(bad), "--concepts", "lib0001", "--methods", "floor", "nearest"]) == 2
    assert "['lib0001'] are in the library" in capsys.readouterr().err and not bad.exists()
