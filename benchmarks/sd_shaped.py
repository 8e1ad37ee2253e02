"""SD-1.5-shaped stand-ins for the learner and calibration benchmarks (random weights, built offline).

- :func:`text_encoder_768`: a CLIP text encoder of SD-1.5's width (768) with few layers, on the tiny-random tokenizer.
- :func:`sd_shaped_base`: a :class:`cns_ray.models.BaseModel` with an SD-1.5-config UNet, that text encoder and
  the tiny-random VAE (4 latent channels, 2x downsampling: ``resolution = 2 * latent``).
- :class:`SDShapedScorer`: :class:`cns_ray.jobs.calibrate.Scorer` on SD-1.5-shaped K/V weights, built without a
  full UNet (shapes from a UNet on the meta device), so scorer actors stay small.
"""

from __future__ import annotations

import torch

from benchmarks.common import build_unet  # also sets the offline environment
from cns_ray.jobs.calibrate import Scorer
from cns_ray.targets import target_specs

TEXT_WIDTH = 768


def text_encoder_768(tokenizer, layers: int = 2, seed: int = 0):
    """CLIPTextModel, hidden 768 / 12 heads / MLP 3072 (SD-1.5's widths), ``layers`` layers, random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=layers,
        num_attention_heads=12,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg).eval().requires_grad_(False)


def sd_shaped_base(unet_config: dict, text_layers: int = 2, seed: int = 0):
    """A BaseModel whose UNet has ``unet_config`` (e.g. SD-1.5's), random fp32 weights, CPU."""
    from diffusers import StableDiffusionPipeline

    from cns_ray.models import BaseModel
    from cns_ray.models.base import compute_base_id
    from cns_ray.models.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline()
    unet = build_unet(unet_config, seed)
    pipe = StableDiffusionPipeline(
        vae=tiny.vae,
        text_encoder=text_encoder_768(tiny.tokenizer, text_layers, seed),
        tokenizer=tiny.tokenizer,
        unet=unet,
        scheduler=tiny.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.eval().requires_grad_(False)
    return BaseModel(pipeline=pipe, base_id=compute_base_id(unet), source="sd15-shaped")


def target_shapes_meta(unet_config: dict) -> dict[str, tuple[int, int]]:
    """Target K/V shapes of a UNet config, from a UNet built on the meta device (no memory, no init cost)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    return {n: t.shape for n, t in target_specs(unet).items()}


class SDShapedScorer(Scorer):
    """A scorer holding random K/V weights of ``unet_config`` and a width-768 text encoder (no UNet, no VAE)."""

    def __init__(self, unet_config: dict, text_layers: int = 2, seed: int = 0):  # noqa: D107 (no super: no base model)
        from cns_ray.models.tiny import _tokenizer

        gen = torch.Generator().manual_seed(seed)
        self.base_id = "sd15-shaped"
        self.device = "cpu"
        self.tokenizer = _tokenizer()
        self.text_encoder = text_encoder_768(self.tokenizer, text_layers, seed)
        self.weights = {  # name -> [out, in], same values in every process for the same seed
            n: torch.randn(shape, generator=gen) * 0.02 for n, shape in target_shapes_meta(unet_config).items()
        }
        self.calls = 0

    def info(self) -> dict:
        return {**super().info(), "threads": torch.get_num_threads()}
