"""Targets: every cross-attention K/V of any UNet2DConditionModel config, by stable name and shape."""

from __future__ import annotations

import pytest
import torch

from cns_ray.errors import ModelLoadError
from cns_ray.targets import find_target_modules, is_target, target_specs, target_weights, total_target_weights


def _expected(unet) -> dict[str, tuple[int, int]]:
    """Independent enumeration: every cross-attention block (attn2) contributes its to_k and to_v."""
    out = {}
    for name, mod in unet.named_modules():
        if name.endswith("attn2"):
            for proj in ("to_k", "to_v"):
                out[f"{name}.{proj}"] = tuple(getattr(mod, proj).weight.shape)
    return out


@pytest.mark.parametrize(
    "model,cross_dim,channels",
    [("tiny_base", 128, (64, 128)), ("tiny_random", 32, (32, 64))],  # cross_attention_dim, block_out_channels
)
def test_tiny_targets(request, model, cross_dim, channels):
    base = request.getfixturevalue(model)
    specs = target_specs(base.unet)
    # both: 2 down blocks x 1 layer + mid 1 + 2 up blocks x 2 layers = 7 transformer blocks -> 14 K/V layers
    assert len(specs) == 14
    assert {n: t.shape for n, t in specs.items()} == _expected(base.unet)
    assert list(specs) == sorted(specs)
    assert all(t.in_features == cross_dim for t in specs.values())  # cross_attention_dim
    assert specs["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"].shape == (channels[0], cross_dim)
    assert specs["mid_block.attentions.0.transformer_blocks.0.attn2.to_v"].shape == (channels[1], cross_dim)
    assert total_target_weights(specs) == sum(t.numel for t in specs.values())
    live = target_weights(base.unet)
    assert all(live[n].data_ptr() == base.unet.get_submodule(n).weight.data_ptr() for n in live)


def test_other_unet_config():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32, 48),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    specs = target_specs(unet)
    # down: 2 cross-attn blocks x 2 layers, mid 1, up: 2 cross-attn blocks x 3 layers = 11 blocks -> 22
    assert len(specs) == 22
    assert {n: t.shape for n, t in specs.items()} == _expected(unet)
    shapes = {n: t.shape for n, t in specs.items()}
    assert shapes["down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_v"] == (32, 24)
    assert shapes["up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k"] == (32, 24)
    assert shapes["up_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k"] == (16, 24)
    assert shapes["mid_block.attentions.0.transformer_blocks.0.attn2.to_k"] == (48, 24)
    assert not any(n.startswith(("down_blocks.2", "up_blocks.0")) for n in specs)  # blocks without cross-attn
    assert not any(".attn1." in n for n in specs)  # self-attention is never a target


def test_model_without_cross_attention_refused():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    with pytest.raises(ModelLoadError, match="cross-attention"):
        find_target_modules(unet)


def test_non_linear_target_refused():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn2 = torch.nn.Module()
            self.attn2.to_k = torch.nn.Conv1d(2, 2, 1)
            self.attn2.to_v = torch.nn.Linear(2, 2)

    with pytest.raises(TypeError, match="nn.Linear"):
        find_target_modules(Odd())


@pytest.mark.parametrize(
    "name,expected",
    [("a.attn2.to_k", True), ("attn2.to_v", True), ("a.attn1.to_k", False), ("a.attn2.to_q", False),
     ("a.xattn2.to_k", False), ("a.attn2.to_k.lora", False)],
)
def test_is_target(name, expected):
    assert is_target(name) is expected
