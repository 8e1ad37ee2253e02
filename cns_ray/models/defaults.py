"""Learning and generation defaults that come with a base model.

A base folder may ship ``cns_defaults.json`` next to ``calibration_prompts.txt``::

    {"steps": 300, "token_lr": 5e-3, "weight_lr": 2e-2, "guidance_scale": 4.0, "resolution": null,
     "reg_lambda": 0.01, "preserve_lambda": 3.0}

``cns learn``, ``python -m pipelines.learn`` (the Ray job), the HTTP learn route and ``cns generate`` use these
values where the user gives none. A base without the file starts from the paper's settings (:data:`PAPER`:
token lr 5e-4, weight lr 3e-5, 500 steps, guidance 7.5): unmeasured on that base, and said so in a log line.
The shipped ``tiny`` carries the values tuned on it (docs/toy-world.md); ``tiny-random`` (random weights, for
tests of the mechanics) uses ``tiny``'s.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from cns_ray.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULTS_FILE = "cns_defaults.json"


@dataclass(frozen=True)
class BaseDefaults:
    """Defaults of one base model; every field may be overridden by the user."""

    steps: int
    """Learner optimisation steps."""
    token_lr: float
    """Adam learning rate of the new token embedding."""
    weight_lr: float
    """Adam learning rate of the concept-neuron weights."""
    guidance_scale: float
    """Classifier-free guidance when a generation request gives none."""
    resolution: int | None = None
    """Training image side in pixels; None = the base model's native size."""
    reg_lambda: float = 1.0
    """Weight of L_reg (the paper's 1 where a file leaves it out)."""
    preserve_lambda: float = 0.0
    """Weight of the earlier concepts' key/value preservation (off where a file leaves it out)."""
    source: str = ""
    """Where the values came from (a file, or ``paper``): for log lines."""

    def __post_init__(self) -> None:
        p = []
        if not (isinstance(self.steps, int) and self.steps >= 1):
            p.append(f"steps={self.steps!r} must be an integer >= 1")
        for name in ("token_lr", "weight_lr", "guidance_scale", "reg_lambda", "preserve_lambda"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                p.append(f"{name}={v!r} must be a number >= 0")
        if self.resolution is not None and not (isinstance(self.resolution, int) and self.resolution >= 8 and self.resolution % 8 == 0):
            p.append(f"resolution={self.resolution!r} must be null or a multiple of 8, >= 8")
        if p:
            raise ConfigError(f"invalid base-model defaults ({self.source or 'given'}): " + "; ".join(p))

    def learner_fields(self) -> dict:
        """The LearnerConfig fields these defaults set."""
        return {"steps": self.steps, "token_lr": self.token_lr, "weight_lr": self.weight_lr, "resolution": self.resolution,
                "reg_lambda": self.reg_lambda, "preserve_lambda": self.preserve_lambda}


PAPER = BaseDefaults(steps=500, token_lr=5e-4, weight_lr=3e-5, guidance_scale=7.5, source="paper")
"""For a base without ``cns_defaults.json``: the CNS paper's learning rates (on Stable Diffusion 1.5)."""
_KEYS = {f.name for f in fields(BaseDefaults)} - {"source"}


def parse_defaults(data: dict, source: str) -> BaseDefaults:
    """Validate a ``cns_defaults.json`` object; missing keys take :data:`PAPER`'s values, unknown keys are refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a JSON object with keys {sorted(_KEYS)}, got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"{source} has unknown keys {unknown}: the known ones are {sorted(_KEYS)}")
    return replace(PAPER, **data, source=source)


def _read(text: str, source: str) -> BaseDefaults:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source} is not valid JSON ({e}): fix or remove it") from e
    return parse_defaults(data, source)


def base_defaults(spec: str) -> BaseDefaults:
    """The defaults of base model ``spec`` (``tiny``, ``tiny-random``, a folder or ``s3://`` of one), read without
    loading the model: only its ``cns_defaults.json``."""
    from cns_ray.models.base import TINY, TINY_FOLDER, TINY_RANDOM, TINY_WORLD

    if spec in (TINY, TINY_WORLD, TINY_RANDOM):
        from cns_ray.data import data_path

        path = data_path(*TINY_FOLDER) / DEFAULTS_FILE
        return _read(path.read_text(), f"{TINY}'s {DEFAULTS_FILE}")
    if spec.startswith("s3://"):
        from cns_ray.fs import resolve

        loc = resolve(spec.rstrip("/"))
        key = loc.join(DEFAULTS_FILE)
        try:
            with loc.fs.open_input_stream(key) as f:
                text = f.read().decode()
        except FileNotFoundError:
            return PAPER
        return _read(text, f"{spec.rstrip('/')}/{DEFAULTS_FILE}")
    path = Path(spec) / DEFAULTS_FILE
    return _read(path.read_text(), str(path)) if path.is_file() else PAPER


def log_defaults(spec: str, d: BaseDefaults) -> None:
    """One line saying which defaults a run starts from (a warning for the paper's, unmeasured on that base)."""
    if d.source == PAPER.source:
        log.warning(
            "base model %s ships no %s: starting from the paper's settings (%d steps, token lr %g, weight lr %g, "
            "guidance %g), not tuned on this base; set --steps/--token-lr/--weight-lr, or add the file to the folder",
            spec, DEFAULTS_FILE, d.steps, d.token_lr, d.weight_lr, d.guidance_scale,
        )
    else:
        log.info("base model %s: defaults from %s: %s", spec, d.source, {k: v for k, v in asdict(d).items() if k != "source"})
