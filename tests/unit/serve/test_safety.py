"""The safety checker as a serving option: loaded from the base folder when on, refused when the folder has none."""

import shutil

import pytest
import torch

from cns_ray.errors import ConfigError
from cns_ray.serve.safety import configure_safety_checker, ships_safety_checker


@pytest.fixture(scope="module")
def folder_with_checker(tiny_base, tmp_path_factory):
    """The shipped tiny folder plus a small random safety checker and feature extractor (as SD-1.5 ships them)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    d = tmp_path_factory.mktemp("base-with-checker") / "base"
    shutil.copytree(tiny_base.folder, d)
    cfg = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 1},
                     vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 1,
                                    "image_size": 32, "patch_size": 8}, projection_dim=32)
    torch.manual_seed(0)
    StableDiffusionSafetyChecker(cfg).save_pretrained(d / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d / "feature_extractor")
    return d


def test_on_runs_the_folders_checker_on_generated_images(folder_with_checker):
    from cns_ray.models import load_base_model

    base = load_base_model(str(folder_with_checker))
    assert ships_safety_checker(base) and base.pipeline.safety_checker is None  # the loader leaves it out
    assert configure_safety_checker(base, True)
    out = base.pipeline("a dog", num_inference_steps=1, height=32, width=32, generator=torch.Generator().manual_seed(0))
    assert out.nsfw_content_detected is not None and len(out.nsfw_content_detected) == 1


def test_on_without_a_checker_is_refused_and_off_is_a_warning(tiny_base, folder_with_checker, caplog):
    from cns_ray.models import load_base_model

    with pytest.raises(ConfigError, match="ships no safety_checker"):
        configure_safety_checker(tiny_base, True)
    assert not configure_safety_checker(tiny_base, False)
    base = load_base_model(str(folder_with_checker))
    with caplog.at_level("WARNING"):
        assert not configure_safety_checker(base, False)
    assert "ships a safety checker" in caplog.text and base.pipeline.safety_checker is None
