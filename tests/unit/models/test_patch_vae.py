"""The exact patch autoencoder: round trip, AutoencoderKL interface, diffusers pipeline save/load."""

import pytest
import torch

from cns_ray.errors import ConfigError, InputError
from cns_ray.models.patch_vae import PatchAutoencoder


def test_encode_decode_is_exact_and_deterministic():
    vae = PatchAutoencoder(patch_size=4)
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # [B, 3, H, W]
    dist = vae.encode(x).latent_dist
    assert dist.mean.shape == (2, 48, 8, 8)
    assert float(dist.std.abs().max()) == 0.0
    assert torch.equal(vae.decode(dist.sample()).sample, x)
    assert torch.equal(vae.decode(vae.encode(x).latent_dist.mode(), return_dict=False)[0], x)
    # a patch's 48 channels are exactly its 4x4x3 pixels
    assert torch.equal(dist.mean[0, :, 1, 2].view(3, 4, 4), x[0, :, 4:8, 8:12])


def test_bad_shapes_and_configs_are_refused():
    vae = PatchAutoencoder(patch_size=4)
    with pytest.raises(InputError, match="multiples of 4"):
        vae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(InputError, match=r"\[B, 48, H, W\]"):
        vae.decode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ConfigError, match="power of two"):
        PatchAutoencoder(patch_size=3)


def test_plugs_into_stable_diffusion_pipeline_and_round_trips(tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cns_ray.models import load_base_model
    from cns_ray.models.tiny import _tokenizer

    tok = _tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=48, out_channels=48, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, max_position_embeddings=77))
    pipe = StableDiffusionPipeline(vae=PatchAutoencoder(), text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(prediction_type="sample"), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    assert pipe.vae_scale_factor == 4
    img = pipe("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 32, 32, 3)
    pipe.save_pretrained(str(tmp_path / "m"))
    base = load_base_model(str(tmp_path / "m"))
    assert isinstance(base.vae, PatchAutoencoder) and base.resolution == 32
    again = base.pipeline("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert abs(again - img).max() < 1e-5
