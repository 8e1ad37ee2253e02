"""Learning/generation defaults that come with a base model (cns_defaults.json), and where they are applied."""

from __future__ import annotations

import argparse
import json
import logging
import shlex

import pytest

from cns_ray.config import LearnerConfig
from cns_ray.errors import ConfigError
from cns_ray.models.defaults import DEFAULTS_FILE, PAPER, base_defaults


def test_shipped_tiny_carries_its_tuned_values():
    for spec in ("tiny", "tiny-world", "tiny-random"):
        d = base_defaults(spec)
        assert (d.steps, d.token_lr, d.weight_lr, d.guidance_scale, d.resolution) == (300, 5e-3, 2e-2, 4.0, None)


def test_a_folder_without_the_file_starts_from_the_paper(tmp_path):
    assert base_defaults(str(tmp_path)) is PAPER
    assert (PAPER.token_lr, PAPER.weight_lr) == (5e-4, 3e-5)


def test_a_folder_file_is_read_and_missing_keys_are_the_papers(tmp_path):
    (tmp_path / DEFAULTS_FILE).write_text(json.dumps({"steps": 800, "weight_lr": 1e-4, "resolution": 256}))
    d = base_defaults(str(tmp_path))
    assert (d.steps, d.token_lr, d.weight_lr, d.guidance_scale, d.resolution) == (800, 5e-4, 1e-4, 7.5, 256)
    assert d.source.endswith(DEFAULTS_FILE)


@pytest.mark.parametrize(
    "content, match",
    [
        ({"step": 10}, r"unknown keys \['step'\].*known ones"),
        ({"token_lr": -1}, r"token_lr=-1 must be a number >= 0"),
        ({"resolution": 100}, r"resolution=100 must be null or a multiple of 8"),
        ([1, 2], r"must hold a JSON object"),
        ("{not json", r"not valid JSON"),
    ],
)
def test_a_bad_file_is_refused_with_its_path(tmp_path, content, match):
    (tmp_path / DEFAULTS_FILE).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match=match) as e:
        base_defaults(str(tmp_path))
    assert str(tmp_path) in str(e.value)


def _parse(argv: list[str]):
    from cns_ray.cli import add_common
    from cns_ray.cli.learn_cmds import add_learn_args, learn_request_and_config

    p = argparse.ArgumentParser()
    add_common(p)
    add_learn_args(p)
    args = p.parse_args(argv)
    return args, *learn_request_and_config(args)


REQ = ["--tenant", "acme", "--concept", "rex", "--images", "dir", "--class-word", "dog"]


def test_cli_leaves_unset_rates_to_the_base_and_keeps_given_ones(tmp_path, caplog):
    from cns_ray.jobs.train import resolve_learner_config

    args, _, cfg = _parse([*REQ, "--base-model", str(tmp_path), "--weight-lr", "0.001"])
    assert (cfg.steps, cfg.token_lr, cfg.weight_lr, cfg.resolution) == (None, None, 0.001, None)
    with caplog.at_level(logging.INFO, logger="cns_ray.models.defaults"):
        resolved = resolve_learner_config(cfg, args.base_model)
    assert (resolved.steps, resolved.token_lr, resolved.weight_lr) == (500, 5e-4, 0.001)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "paper" in warned[0] and DEFAULTS_FILE in warned[0] and "--token-lr" in warned[0]

    _, _, tiny = _parse(REQ)  # the default base: tiny's own values
    tiny = resolve_learner_config(tiny, "tiny")
    assert (tiny.steps, tiny.token_lr, tiny.weight_lr) == (300, 5e-3, 2e-2)


def test_a_given_rate_equal_to_the_class_default_reaches_the_ray_job():
    """A job for an SD base where the user asked for token lr 5e-3 (the class default) must not fall back to the
    paper's 5e-4 on the cluster: every given base-dependent value is passed on, unset ones are not."""
    from cns_ray.jobs.submit import learn_entrypoint

    args, req, cfg = _parse([*REQ, "--token-lr", str(LearnerConfig().token_lr)])
    argv = shlex.split(learn_entrypoint(req, cfg, "s3://b/store", "s3://b/sd15"))
    assert argv[argv.index("--token-lr") + 1] == "0.005"
    assert "--weight-lr" not in argv and "--steps" not in argv
    _, _, again = _parse(argv[3:])
    assert again == cfg


def test_preservation_flags_reach_the_ray_job():
    from cns_ray.jobs.submit import learn_entrypoint

    args, req, cfg = _parse([*REQ, "--reg-lambda", "0.01", "--preserve-lambda", "1", "--preserve-general", "0.3"])
    assert (cfg.reg_lambda, cfg.preserve_lambda, cfg.preserve_general) == (0.01, 1.0, 0.3)
    argv = shlex.split(learn_entrypoint(req, cfg, "s3://b/store", "tiny"))
    assert argv[argv.index("--preserve-lambda") + 1] == "1.0"
    assert argv[argv.index("--preserve-general") + 1] == "0.3"
    _, _, again = _parse(argv[3:])
    assert again == cfg
    _, _, plain = _parse(REQ)  # left to the base: tiny's file says 0.01 with preservation, the paper's 1 without
    assert (plain.reg_lambda, plain.preserve_lambda) == (None, None)
    assert "--preserve-lambda" not in learn_entrypoint(req, plain, "s3://b/s", "tiny")
    assert plain.preserve_general == 0.0 and "--preserve-general" not in learn_entrypoint(req, plain, "s3://b/s", "tiny")
    from cns_ray.models.defaults import base_defaults

    tiny = plain.with_base_defaults(base_defaults("tiny"))
    assert (tiny.reg_lambda, tiny.preserve_lambda) == (0.01, 3.0)
    paper = plain.with_base_defaults(PAPER)
    assert (paper.reg_lambda, paper.preserve_lambda) == (1.0, 0.0)


def test_with_base_defaults_fills_only_nones():
    cfg = LearnerConfig(steps=None, token_lr=1.0, weight_lr=None, resolution=64)
    assert cfg.unresolved() == ["steps", "weight_lr"]
    out = cfg.with_base_defaults(PAPER)
    assert (out.steps, out.token_lr, out.weight_lr, out.resolution) == (500, 1.0, 3e-5, 64)
    assert out.unresolved() == []


def test_serve_config_without_guidance_takes_the_bases(tmp_path):
    """deploy/serve.yaml leaves default_guidance out: the app uses the base's (tiny: 4.0; a bare folder: 7.5)."""
    from cns_ray.serve.app import app_builder

    def guidance(args: dict) -> float:
        return app_builder(args)._bound_deployment.init_args[1]["default_guidance"]  # the ingress's ServingConfig

    assert guidance({"base_model": "tiny"}) == 4.0
    assert guidance({"base_model": str(tmp_path)}) == PAPER.guidance_scale
    assert guidance({"base_model": "tiny", "default_guidance": 9.0}) == 9.0
