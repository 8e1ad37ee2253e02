"""The embedded test base model ``tiny-random``: Stable Diffusion architecture, built offline from configs.

Random weights built offline from configs: for fast tests of the system's mechanics; its images are noise (the
embedded default ``tiny`` is the shipped trained model, cns_ray/data/base/tiny-world). 64 px images (32x32x4
latents), cross_attention_dim 32. Same seed -> same weights -> same base_id. Nothing is downloaded. Its tokenizer
is a small byte-level BPE trained on a fixed built-in corpus (deterministic), wrapped as a transformers fast
tokenizer.
"""

from __future__ import annotations

import torch

TINY_SEED = 0
TINY_RESOLUTION = 64

_CORPUS_WORDS = (
    "a an the of on in at with and photo painting drawing picture image illustration portrait close up style "
    "dog cat bird car house tree flower mountain lake city street beach forest robot man woman child person toy "
    "red green blue yellow black white grey orange purple pink brown small large big tiny round square striped "
    "sitting running standing playing sleeping night day sunrise snow rain sky ocean river table window sofa "
    "kitchen fruit pasta castle boat train station village desert cactus moon astronaut plant room park hill "
    "shape triangle circle star heart top bottom left right center background foreground texture wooden metal "
    "mug teddy bear vase backpack sneaker clock lamp sculpture statue"
)


def _tokenizer():
    from cns_ray.data import data_path
    from cns_ray.models.tokenizer import train_bpe_tokenizer

    words = _CORPUS_WORDS.split()
    corpus = [" ".join(words[i : i + 8]) for i in range(len(words))] * 4
    corpus += data_path("calibration_prompts.txt").read_text().splitlines() * 4
    return train_bpe_tokenizer(corpus, vocab_size=1000, model_max_length=77)


def build_tiny_pipeline(seed: int = TINY_SEED):
    """A deterministic tiny ``StableDiffusionPipeline`` (random weights from ``seed``), fp32 on CPU."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tokenizer()
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=TINY_RESOLUTION // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=TINY_RESOLUTION,
        )
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    finally:
        torch.random.set_rng_state(gen_state)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
