"""What a diffusers load needs from a folder (cns_ray/models/files.py)."""

from __future__ import annotations

import pytest

from cns_ray.errors import ModelLoadError
from cns_ray.models.files import detect_variant, needed_files

SD15 = [  # what a full Stable Diffusion 1.5 download holds (names as on the hub)
    "model_index.json", "v1-5-pruned.ckpt", "v1-5-pruned-emaonly.safetensors", "README.md",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.bin",
    "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_flax_model.msgpack",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
    "text_encoder/model.fp16.safetensors", "text_encoder/flax_model.msgpack",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
    "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
    "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json", "safety_checker/model.safetensors", "safety_checker/pytorch_model.bin",
]


def test_sd15_download_keeps_one_weight_file_per_component():
    got = needed_files(SD15)
    assert got == sorted([
        "model_index.json", "README.md",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json", "scheduler/scheduler_config.json",
        "feature_extractor/preprocessor_config.json", "safety_checker/config.json", "safety_checker/model.safetensors",
    ])
    assert detect_variant(SD15, "sd15") is None


def test_asked_variant_is_kept_and_plain_weights_fill_in():
    got = needed_files(SD15, "fp16")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in got and "unet/diffusion_pytorch_model.safetensors" not in got
    assert "safety_checker/model.safetensors" in got  # no fp16 there: the plain weights
    assert not any(p.endswith((".bin", ".ckpt", ".msgpack")) or "non_ema" in p for p in got)


def test_bin_only_and_sharded_folders():
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
             "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
             "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
             "text_encoder/pytorch_model.bin.index.json", "text_encoder/pytorch_model-00001-of-00002.bin"]
    got = needed_files(files)
    assert "unet/diffusion_pytorch_model.bin" in got
    assert [p for p in got if p.startswith("text_encoder/")] == [
        "text_encoder/config.json", "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.json",
    ]


def test_fp16_only_folder_is_detected():
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.fp16.safetensors"]
    assert detect_variant(files, "x") == "fp16"
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in needed_files(files, "fp16")


def test_mixed_variants_without_a_common_one_are_refused():
    files = ["unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.bf16.safetensors"]
    with pytest.raises(ModelLoadError, match=r"unet/: \['fp16'\].*vae/: \['bf16'\].*variant"):
        detect_variant(files, "s3://b/m")
