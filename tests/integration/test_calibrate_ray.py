"""Sharded calibration on local Ray (127.0.0.1) and the calibrate/select CLI on a local store."""

from __future__ import annotations

import pytest
import torch

from cns_ray import neurons
from cns_ray.config import SelectionConfig, StoreConfig
from cns_ray.jobs.calibrate import general_masks_info
from cns_ray.select import general_masks_local, load_prompts
from cns_ray.store import ConceptStore


def test_two_actors_equal_single_process_and_cache(ray_local, tiny_base, tmp_path):
    prompts = load_prompts()
    cfg = SelectionConfig(select_ratio=0.3, prompt_chunk=4)
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    seen: list[tuple[int, int]] = []
    first = general_masks_info(tiny_base, store, cfg, prompts, num_actors=2, progress=lambda d, t: seen.append((d, t)))
    assert not first.from_cache and first.shards == 2
    assert seen == [(1, 2), (2, 2)]
    ref = general_masks_local(tiny_base, prompts, cfg)
    assert set(first.masks) == set(ref)
    for n in ref:
        assert torch.equal(first.masks[n], ref[n]), n
    frac = neurons.mask_fraction(ref)
    assert 0.0 < frac < cfg.select_ratio  # a non-trivial mask, so equality means something
    # second run: served from the store, no actor started, no shard scored
    second = general_masks_info(tiny_base, store, cfg, prompts, num_actors=2, progress=lambda d, t: seen.append((d, t)))
    assert second.from_cache and second.shards == 0 and len(seen) == 2
    assert all(torch.equal(second.masks[n], ref[n]) for n in ref)


def _images(folder, n: int, captions: list[str] | None = None):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i, 200 - 30 * i, 90)).save(folder / f"img{i}.png")
    if captions is not None:
        (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    return folder


def _table_counts(out: str) -> dict[str, list[int]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0].endswith(("to_k", "to_v")):
            rows[parts[0]] = [int(x) for x in parts[2:]]
    return rows


def test_cli_calibrate_and_select(tmp_path, capsys, tiny_base):
    from cns_ray.cli import main
    from cns_ray.select import select_concept

    store = str(tmp_path / "store")
    assert main(["calibrate", "--store", store, "--select-ratio", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "scored in 1 shard" in out and "overall general fraction" in out
    assert sum(1 for line in out.splitlines() if line.split() and line.split()[0].endswith(("to_k", "to_v"))) == 14
    assert main(["calibrate", "--store", store, "--select-ratio", "0.3"]) == 0
    assert "from the store cache" in capsys.readouterr().out
    # the Ray job entrypoint sees the same cache entry (a hit: no Ray, no scoring)
    import json

    from pipelines.calibrate import main as job_main

    assert job_main(["--store", store, "--select-ratio", "0.3", "--actors", "2"]) == 0
    job = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert job["from_cache"] is True and job["shards"] == 0 and len(job["layers"]) == 14

    caps = ["a photo of a dog on the beach", "a small dog on a sofa", "a dog in the park"]
    folder = _images(tmp_path / "rex", 3, caps)
    assert main(["select", "--store", store, "--images", str(folder), "--class-word", "dog", "--select-ratio", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "3 image(s)" in out and "from the store cache" in out
    rows = _table_counts(out)
    assert len(rows) == 14
    cfg = SelectionConfig(select_ratio=0.3)
    general = general_masks_local(tiny_base, load_prompts(base=tiny_base), cfg)  # the CLI's default: the base's own
    sel = select_concept(tiny_base, caps, general, cfg)
    short = {n.replace(".transformer_blocks.0.", ".").replace("attentions.", "attn"): n for n in sel.concept}
    for s, (b, g, c) in rows.items():
        n = short[s]
        assert (b, g, c) == (int(sel.base[n].sum()), int(general[n].sum()), int(sel.concept[n].sum()))
    total = int(sel.summary()["concept_count"])
    assert f"concept neurons: {total:,} = " in out

    # template captions (no captions.txt), with a budget
    plain = _images(tmp_path / "plain", 2)
    assert main(["select", "--store", store, "--images", str(plain), "--class-word", "cat", "--select-ratio", "0.3",
                 "--budget", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "caption: a photo of a cat" in out
    n_weights = sum(m.numel() for m in general.values())
    assert sum(r[2] for r in _table_counts(out).values()) <= int(0.001 * n_weights)


def test_cli_select_bad_inputs(tmp_path, capsys):
    from cns_ray.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("not an image")
    assert main(["select", "--store", str(tmp_path / "s"), "--images", str(empty), "--class-word", "dog"]) == 2
    err = capsys.readouterr().err
    assert "0 images" in err and str(empty) in err
    few = _images(tmp_path / "few", 3, ["only one caption"])
    assert main(["select", "--store", str(tmp_path / "s"), "--images", str(few), "--class-word", "dog"]) == 2
    assert "for 3 images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["select", "--images", str(few)])  # --class-word is required
    assert main(["calibrate", "--store", str(tmp_path / "s"), "--select-ratio", "1.5"]) == 2
    assert "select_ratio=1.5" in capsys.readouterr().err


def test_cli_calibrate_and_select_on_s3_store(s3_env, tmp_path, capsys):
    from cns_ray.cli import main

    store = f"s3://{s3_env}/cns"
    assert main(["calibrate", "--store", store]) == 0
    assert "scored in 1 shard" in capsys.readouterr().out
    folder = _images(tmp_path / "s3imgs", 2)
    assert main(["select", "--store", store, "--images", str(folder), "--class-word", "dog"]) == 0
    out = capsys.readouterr().out
    assert "general neurons from the store cache" in out and len(_table_counts(out)) == 14
