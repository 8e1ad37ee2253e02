"""ServingConfig validation and the ingress's request checks (pure functions, no Ray cluster)."""

import pytest

from cns_ray.errors import ConfigError, InputError
from cns_ray.serve.config import ServingConfig
from cns_ray.serve.limits import ImageRequest, Limits, build_generation, parse_size


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
LIM = Limits.for_base(CFG, 64)


def test_valid_request_gets_defaults():
    g = build_generation(ImageRequest(prompt="a <tok> dog", size="64x32", steps=3), LIM)
    assert (g.height, g.width, g.steps, g.n) == (32, 64, 3, 1)
    assert build_generation(ImageRequest(prompt="x"), LIM).height == 64


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
    with pytest.raises(InputError, match=match) as e:
        build_generation(ImageRequest(**body), LIM)
    assert e.value.http_status == 422


def test_parse_size_is_width_by_height():
    assert parse_size("64x32", LIM) == (32, 64)


def test_limits_follow_the_served_base():
    """No max_size / max_request_cost: at most 2x the native side, and a cost budget from the native size."""
    cfg = ServingConfig(max_n=4, default_steps=25, max_steps=100)
    lim = Limits.for_base(cfg, 32)
    assert lim.max_side == 64 and lim.max_cost == 4 * 2 * 25 * 32 * 32
    with pytest.raises(InputError, match=r"multiple of 8 in \[8, 64\]"):
        build_generation(ImageRequest(prompt="x", size="1024x1024"), lim)
    with pytest.raises(InputError, match=r"n\*steps\*height\*width = 4\*100\*64\*64 = 1638400, the limit is 204800"):
        build_generation(ImageRequest(prompt="x", size="64x64", n=4, steps=100), lim)
    assert build_generation(ImageRequest(prompt="x", n=4, steps=50), lim).n == 4  # native size, 2x default steps
    assert Limits.for_base(ServingConfig(max_size=512, max_request_cost=10**9), 32).max_side == 512


@pytest.mark.parametrize("body", [{"prompt": "x", "n": True}, {"prompt": "x", "n": "2"}, {"prompt": "x", "n": 2.0},
                                  {"prompt": "x", "steps": "3"}, {"prompt": "\ud800 dog"}])
def test_bodies_are_strict(body):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ImageRequest(**body)


@pytest.mark.parametrize("version", [True, "2", 2.0])
def test_versions_are_strict_integers(version):
    from pydantic import ValidationError

    from cns_ray.serve.limits import RollbackRequest

    with pytest.raises(ValidationError):
        RollbackRequest(version=version)
    assert RollbackRequest(version=2).version == 2


def test_learn_requests_default_to_the_served_bases_learning_steps():
    """No ``learn_steps`` configured and none in the request: the run takes the base's own (tiny ships 300)."""
    from cns_ray.config import LearnerConfig
    from cns_ray.jobs.train import resolve_learner_config
    from cns_ray.serve.config import ServingConfig

    assert ServingConfig().learn_steps is None
    cfg = resolve_learner_config(LearnerConfig(steps=None, token_lr=None, weight_lr=None), "tiny")
    assert (cfg.steps, cfg.token_lr, cfg.weight_lr) == (300, 5e-3, 2e-2)
    with pytest.raises(Exception, match="learn_steps=0"):
        ServingConfig(learn_steps=0)
