"""Typed configs, validated at construction and passed whole. Entrypoints parse; library code takes these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from cns_ray.errors import ConfigError

DEFAULT_STORE_URI = "./cns-store"
DEFAULT_BASE_MODEL = "tiny"


def _check(problems: list[str], cond: bool, msg: str) -> None:
    if not cond:
        problems.append(msg)


def _raise(name: str, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"invalid {name}: " + "; ".join(problems))


@dataclass(frozen=True)
class SelectionConfig:
    """How concept neurons are selected (docs/design.md, The method)."""

    select_ratio: float = 0.1
    """Fraction of each output row's input weights kept per caption/prompt (top by |W| * ||c||)."""
    budget: float | None = None
    """Optional cap on concept neurons as a fraction of all target weights (kept by score); None = no cap."""
    prompt_chunk: int = 8
    """Prompts scored together per batch; bounds memory at [chunk, out, in] per layer."""
    exclusive: bool = False
    """Opt-in (docs/method-notes.md): a tenant's new concept takes no entry its earlier concepts hold. Its neurons
    are (base AND NOT general AND NOT earlier), filled back up per layer to today's count with the highest mean
    caption scores among the entries not general and not earlier; so one tenant's concepts own disjoint weights.
    False (the default): earlier concepts' entries may be selected again, and L_reg pulls them to their values."""
    token_warmup: int = 0
    """Opt-in (docs/method-notes.md): steps of learning only the placeholder embedding before selection; selection
    then scores the training captions *with* the warmed-up embedding spliced in, so two concepts with the same caption
    templates can differ in what is scored. 0 (the default): selection scores the caption without the placeholder."""

    def __post_init__(self) -> None:
        p: list[str] = []
        _check(p, 0.0 < self.select_ratio <= 1.0, f"select_ratio={self.select_ratio} must be in (0, 1], e.g. 0.1")
        _check(
            p,
            self.budget is None or 0.0 < self.budget <= 1.0,
            f"budget={self.budget} must be None or in (0, 1], e.g. 0.01 for 1% of the target weights",
        )
        _check(p, self.prompt_chunk >= 1, f"prompt_chunk={self.prompt_chunk} must be >= 1")
        _check(p, self.token_warmup >= 0, f"token_warmup={self.token_warmup} must be >= 0 (0 = no warm-up), e.g. 25")
        _raise("SelectionConfig", p)


BASE_DEFAULT_FIELDS = ("steps", "token_lr", "weight_lr", "resolution", "reg_lambda", "preserve_lambda")
"""LearnerConfig fields a base model's ``cns_defaults.json`` fills where they are None."""


@dataclass(frozen=True)
class LearnerConfig:
    """One CNS learning run (docs/design.md, The method: learning concept m)."""

    steps: int | None = 300
    """Optimisation steps. None = the base model's default (its ``cns_defaults.json``: :meth:`with_base_defaults`),
    which is what the CLI, the Ray job and the HTTP learn route pass when the user gives none."""
    token_lr: float | None = 5e-3
    """Adam learning rate of the new token embedding; None = the base model's default."""
    weight_lr: float | None = 2e-2
    """Adam learning rate of the selected concept-neuron weights; None = the base model's default.

    The class defaults (steps, token_lr, weight_lr) are the values tuned on the embedded ``tiny`` model
    (docs/toy-world.md; it ships them in its ``cns_defaults.json``): the sparse concept neurons need a far higher
    rate than dense fine-tuning there. Entrypoints resolve them per base model instead (a base without the file starts
    from the paper's 5e-4 / 3e-5 and 500 steps: cns_ray/models/defaults.py)."""
    reg_lambda: float | None = 1.0
    """Weight of L_reg (pull towards the previous concept's values on overlap, towards the base elsewhere); None = the
    base model's default (``tiny``: 0.01, with ``preserve_lambda`` 3; a base without ``cns_defaults.json``: the
    paper's 1, without preservation). The class default (1, with no preservation) is the paper protocol's ``cns``
    row (docs/toy-world.md)."""
    preserve_lambda: float | None = 0.0
    """Weight of the key/value preservation term (docs/method-notes.md): the mean squared change of the target
    layers' keys and values on the text of the tenant's earlier concepts' prompts (this concept's captions with
    each earlier token and class word in its place) and of the unconditional prompt. It protects what earlier
    concepts *produce*, including through the template words their prompts share with this one, where ``L_reg``
    only holds weights near their values. 0 turns it off; None = the base model's default."""
    preserve_general: float = 0.0
    """Weight of the same key/value preservation term on the base model's calibration prompts (its own domain,
    ``select.load_prompts(base=...)``: what general neurons are scored on), against ``W^(m-1)``: protects prompts
    that name no concept. Opt-in (0 = off); docs/method-notes.md has what it costs and buys."""
    batch_size: int = 4
    """Images per step (sampled with replacement from the concept images)."""
    resolution: int | None = None
    """Training image size in pixels; None = the base model's default (``cns_defaults.json``), else its native size."""
    augment: bool = True
    """Random horizontal flip and small random crop."""
    seed: int = 0
    """Seed for sampling, noise and augmentation."""
    checkpoint_every: int = 50
    """Steps between Ray Train checkpoints (0 = only at the end)."""
    num_workers: int = 1
    """Ray Train workers (data parallel); 1 by default."""
    use_gpu: bool = False
    """Ask Ray Train for one GPU per worker."""
    cpus_per_worker: float = 1.0
    """CPUs per Ray Train worker (fractional on small machines)."""
    max_failures: int = 2
    """Worker failures tolerated; a failed worker resumes from the last checkpoint."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    method: Literal["cns", "cones"] = "cns"
    """``cns`` (a token embedding + values on concept neurons) or ``cones`` (gradient concept neurons, stored as
    indices only and shut at serving: cns_ray/cones.py). With cones, ``steps`` are the score-accumulation steps and
    the learning rates are unused."""
    cones_ratio: float = 0.01
    """Cones: at most this fraction of each target layer's weights is shut (top positive ``W * dL/dW``)."""
    cones_joint: tuple[str, ...] = ()
    """Cones, optional: the names of two or more of the tenant's Cones concepts this run refines jointly on
    multi-subject images (the paper's few-step joint fine-tuning, kept index-only: cns_ray/learn/cones.py). With their
    union shut, ``W * dL/dW`` on the joint images picks extra neurons; serving shuts them too whenever a prompt names
    every one of those concepts. Empty (the default): an ordinary single-subject Cones concept."""

    def __post_init__(self) -> None:
        p: list[str] = []
        _check(p, self.method in ("cns", "cones"), f"method={self.method!r} must be 'cns' or 'cones'")
        _check(p, 0.0 < self.cones_ratio <= 1.0, f"cones_ratio={self.cones_ratio} must be in (0, 1], e.g. 0.01")
        object.__setattr__(self, "cones_joint", tuple(self.cones_joint or ()))  # a list after a JSON round trip
        _check(p, not self.cones_joint or (self.method == "cones" and len(set(self.cones_joint)) == len(self.cones_joint) >= 2),
               f"cones_joint={list(self.cones_joint)} needs method='cones' and two or more distinct concept names, "
               "e.g. ('rex', 'mia')")
        _check(p, self.steps is None or self.steps >= 1, f"steps={self.steps} must be >= 1 (or None: the base's default)")
        _check(p, self.token_lr is None or self.token_lr >= 0, f"token_lr={self.token_lr} must be >= 0 (or None)")
        _check(p, self.weight_lr is None or self.weight_lr >= 0, f"weight_lr={self.weight_lr} must be >= 0 (or None)")
        _check(p, self.reg_lambda is None or self.reg_lambda >= 0,
               f"reg_lambda={self.reg_lambda} must be >= 0 (0 turns L_reg off; or None: the base's default)")
        _check(p, self.preserve_lambda is None or self.preserve_lambda >= 0,
               f"preserve_lambda={self.preserve_lambda} must be >= 0 (0 turns it off; or None: the base's default)")
        _check(p, self.preserve_general >= 0, f"preserve_general={self.preserve_general} must be >= 0 (0 turns it off)")
        _check(p, self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1")
        _check(
            p,
            self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0),
            f"resolution={self.resolution} must be None or a multiple of 8, >= 8",
        )
        _check(p, self.checkpoint_every >= 0, f"checkpoint_every={self.checkpoint_every} must be >= 0")
        _check(p, self.num_workers >= 1, f"num_workers={self.num_workers} must be >= 1")
        _check(p, self.cpus_per_worker > 0, f"cpus_per_worker={self.cpus_per_worker} must be > 0")
        _check(p, self.max_failures >= 0, f"max_failures={self.max_failures} must be >= 0")
        _raise("LearnerConfig", p)

    def to_dict(self) -> dict:
        return asdict(self)

    def unresolved(self) -> list[str]:
        """Fields left to the base model's defaults (None) that a run needs."""
        return [n for n in BASE_DEFAULT_FIELDS if n != "resolution" and getattr(self, n) is None]

    def with_base_defaults(self, defaults) -> "LearnerConfig":
        """This config with every None of :data:`BASE_DEFAULT_FIELDS` taken from ``defaults`` (a
        ``cns_ray.models.defaults.BaseDefaults``); values the user gave are kept."""
        given = defaults.learner_fields()
        return replace(self, **{n: given[n] for n in BASE_DEFAULT_FIELDS if getattr(self, n) is None})

    @classmethod
    def from_dict(cls, d: dict) -> "LearnerConfig":
        d = dict(d)
        sel = d.pop("selection", None)
        return cls(**d, selection=SelectionConfig(**sel) if isinstance(sel, dict) else (sel or SelectionConfig()))


@dataclass(frozen=True)
class StoreConfig:
    """Where the concept store lives and how values are stored."""

    uri: str = DEFAULT_STORE_URI
    """Local folder or ``s3://bucket/prefix``. S3 endpoint/credentials come from the usual AWS environment
    (``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for a custom endpoint)."""
    value_dtype: Literal["float16", "float32"] = "float16"
    """dtype of stored delta values: float16 (~3 B/entry) or float32 (exact)."""

    def __post_init__(self) -> None:
        p: list[str] = []
        _check(p, bool(self.uri), "uri must not be empty: give a folder or s3://bucket/prefix")
        _check(
            p,
            self.value_dtype in ("float16", "float32"),
            f"value_dtype={self.value_dtype!r} must be 'float16' or 'float32'",
        )
        _raise("StoreConfig", p)
