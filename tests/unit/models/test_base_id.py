"""base_id: the target weights and the shape-determining UNet config, nothing a library upgrade may add."""

from __future__ import annotations

import torch

from cns_ray.models import compute_base_id, load_base_model, save_base_model
from cns_ray.models.base_id import SHAPE_KEYS, shape_config


def test_an_added_config_default_leaves_base_id_unchanged(fresh_tiny):
    before = compute_base_id(fresh_tiny.unet)
    # What a diffusers upgrade does: a new __init__ argument with its default appears in unet.config.
    fresh_tiny.unet.register_to_config(some_future_option=True, another_future_default=0.5)
    assert "some_future_option" in fresh_tiny.unet.config
    assert compute_base_id(fresh_tiny.unet) == before


def test_a_config_key_saved_by_a_newer_diffusers_leaves_base_id_unchanged(tiny_base, tmp_path):
    import json

    folder = save_base_model(tiny_base, tmp_path / "saved")
    path = folder / "unet" / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(_diffusers_version="9.9.9", some_future_option=True, sample_size=cfg["sample_size"])
    path.write_text(json.dumps(cfg))
    assert load_base_model(str(folder)).base_id == tiny_base.base_id


def test_shape_config_change_changes_base_id(fresh_tiny):
    before = compute_base_id(fresh_tiny.unet)
    heads = fresh_tiny.unet.config.attention_head_dim
    fresh_tiny.unet.register_to_config(attention_head_dim=heads * 2)  # same weights, other attention heads
    assert compute_base_id(fresh_tiny.unet) != before
    assert set(shape_config(fresh_tiny.unet)) <= set(SHAPE_KEYS)


def test_target_weight_change_changes_base_id(fresh_tiny):
    before = compute_base_id(fresh_tiny.unet)
    w = next(iter(fresh_tiny.target_weights().values()))
    with torch.no_grad():
        w[0, 0] += 1.0
    assert compute_base_id(fresh_tiny.unet) != before


def test_fp16_and_fp32_loads_share_a_base_id(tiny_base, tmp_path):
    folder = save_base_model(tiny_base, tmp_path / "saved")
    assert load_base_model(str(folder), dtype=torch.float16).base_id == tiny_base.base_id
