"""ServingConfig validation and the ingress's request checks (pure functions, no Ray cluster)."""

import pytest

from cns_ray.errors import ConfigError
from cns_ray.serve.config import ServingConfig
from cns_ray.serve.ingress import ApiError, ImageRequest, build_generation, parse_size


def test_config_refuses_bad_values_and_plain_keys():
    with pytest.raises(ConfigError, match="max_size=100"):
        ServingConfig(max_size=100)
    with pytest.raises(ConfigError, match="hashes"):
        ServingConfig(api_keys={"plain": "acme"})
    with pytest.raises(ConfigError, match="unknown ServingConfig option"):
        ServingConfig.from_dict({"stor": "x"})
    cfg = ServingConfig(replicas=2, max_n=3)
    assert ServingConfig.from_dict(cfg.to_dict()) == cfg


CFG = ServingConfig(max_n=2, max_steps=10, default_steps=4, max_size=128, max_prompt_chars=50)


def test_valid_request_gets_defaults():
    g = build_generation(ImageRequest(prompt="a <tok> dog", size="64x32", steps=3), CFG, 64)
    assert (g["height"], g["width"], g["steps"], g["n"]) == (32, 64, 3, 1)
    assert build_generation(ImageRequest(prompt="x"), CFG, 64)["height"] == 64


@pytest.mark.parametrize(
    "body,match",
    [
        ({"prompt": "x" * 51}, "limit is 50"),
        ({"prompt": "x", "n": 3}, r"n=3 must be in \[1, 2\]"),
        ({"prompt": "x", "steps": -1}, r"steps=-1 must be in \[1, 10\]"),
        ({"prompt": "x", "size": "60x64"}, "multiple of 8"),
        ({"prompt": "x", "size": "256x256"}, "multiple of 8 in"),
        ({"prompt": "x", "size": "big"}, "must look like"),
        ({"prompt": " "}, "prompt is empty"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "response_format": "png", "n": 2}, "one image"),
    ],
)
def test_limits(body, match):
    with pytest.raises(ApiError, match=match) as e:
        build_generation(ImageRequest(**body), CFG, 64)
    assert e.value.status == 422


def test_parse_size_is_width_by_height():
    assert parse_size("64x32", 64, CFG) == (32, 64)
