"""Base models: the embedded ``tiny`` default (shipped, trained) and the ``tiny-random`` builder load the same
weights every time; diffusers folders round-trip with the same base_id."""

from __future__ import annotations

import pytest
import torch

from cns_ray.errors import ModelLoadError
from cns_ray.data import data_path
from cns_ray.models import TINY, TINY_RANDOM, compute_base_id, load_base_model, save_base_model


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "spec, resolution, dim, folder",
    [
        (TINY, 32, 128, data_path("base", "tiny-world")),  # the default: the shipped trained model, from the package
        (TINY_RANDOM, 64, 32, None),  # built in memory from configs
    ],
)
def test_embedded_models_are_deterministic(request, spec, resolution, dim, folder):
    first = request.getfixturevalue("tiny_base" if spec == TINY else "tiny_random")
    again = load_base_model(spec)
    assert again.base_id == first.base_id
    assert len(first.base_id) == 16
    for part in ("unet", "text_encoder", "vae"):
        assert _same_state(getattr(again, part), getattr(first, part)), part
    assert again.tokenizer("a photo of a dog").input_ids == first.tokenizer("a photo of a dog").input_ids
    assert first.resolution == resolution
    assert first.unet.config.cross_attention_dim == dim
    assert (first.source, first.folder) == (spec, folder)


def test_base_id_tracks_target_weights(fresh_tiny):
    before = fresh_tiny.base_id
    w = next(iter(fresh_tiny.target_weights().values()))
    with torch.no_grad():
        w[0, 0] += 1.0
    assert compute_base_id(fresh_tiny.unet) != before


def test_save_and_load_folder(tiny_base, tmp_path):
    folder = save_base_model(tiny_base, tmp_path / "tiny-sd")
    assert (folder / "model_index.json").exists()
    loaded = load_base_model(str(folder))
    assert loaded.base_id == tiny_base.base_id
    assert loaded.source == str(folder) and loaded.folder == folder
    assert _same_state(loaded.text_encoder, tiny_base.text_encoder)
    assert loaded.tokenizer("a red car").input_ids == tiny_base.tokenizer("a red car").input_ids
    assert loaded.target_shapes() == tiny_base.target_shapes()


def test_folder_without_model_index_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_base_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="model_index.json") as e:
        load_base_model(str(tmp_path / "does-not-exist"))
    assert "'tiny'" in str(e.value) and "'tiny-random'" in str(e.value)  # the message names the built-in choices


def test_broken_folder_is_a_model_load_error(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}')
    with pytest.raises(ModelLoadError, match="could not load"):
        load_base_model(str(tmp_path))


def test_folder_of_only_fp16_weights_loads(tiny_base, tmp_path):
    """A folder saved with variant="fp16" holds only *.fp16.safetensors: detected, loaded, same base_id."""
    folder = tmp_path / "fp16"
    tiny_base.pipeline.save_pretrained(str(folder), variant="fp16")
    assert not list(folder.rglob("diffusion_pytorch_model.safetensors"))
    loaded = load_base_model(str(folder))
    assert loaded.base_id == tiny_base.base_id
    assert load_base_model(str(folder), variant="fp16").base_id == tiny_base.base_id
