"""The evaluation configuration (typed, validated, passed whole)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cns_ray.errors import ConfigError

METHODS = ("cns", "naive", "random", "cns_noreg", "fusion", "token", "cones", "cns_kv")
"""CNS; naive sequential fine-tune of all K/V weights; as many random neurons as CNS picks; CNS without L_reg;
independent per-concept CNS deltas summed at the end (the fusion baseline); the token embedding alone
(textual-inversion-style, no weights); Cones (gradient concept neurons, indices only, shut when a prompt names the
concept's token; a two-concept prompt shuts the union: cns_ray/cones.py); CNS with key/value preservation of the
tenant's earlier concepts' prompts (``LearnerConfig.preserve_lambda``) at a weak ``L_reg`` (cns_ray/eval/methods.py:
KV_PRESERVE)."""


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run of the paper's protocol on the toy world."""

    base_model: str = "tiny"
    """Base model spec (``tiny``, a diffusers folder or s3://)."""
    metric_model: str = "toy"
    """``toy`` (the shipped toy CLIP), a toy-clip folder, or a transformers CLIP folder."""
    sequences: tuple[str, ...] = ("seq1", "seq2", "seq3")
    """Concept sequences (cns_ray.world.concepts.SEQUENCES); sequences run in parallel on Ray."""
    concepts_per_sequence: int | None = None
    """Use only the first N concepts of each sequence (None = all)."""
    methods: tuple[str, ...] = METHODS
    steps: int = 300
    """Learning steps per concept."""
    batch_size: int = 4
    token_lr: float = 5e-3
    weight_lr: float = 2e-2
    """Adam lr of the trained weights of the sparse methods (CNS, random neurons, CNS without L_reg, fusion)."""
    naive_weight_lr: float = 2e-3
    """Adam lr of naive fine-tuning (all K/V weights): each method at the best of the rates tried on the toy world
    (sparse: 5e-4, 5e-3, 2e-2, 4e-2, 1e-1; naive: 5e-4, 2e-3; docs/toy-world.md)."""
    reg_lambda: float = 1.0
    select_ratio: float = 0.1
    n_ref: int = 6
    """Reference images per concept."""
    pairs: int = 0
    """Two-object references per concept besides ``n_ref``: the concept beside a described partner of its class,
    alternately right and left (:func:`cns_ray.world.concepts.reference_set`); 0 = one-object references only."""
    pair_orders: str = "sequence"
    """Two-concept prompts: ``sequence`` (each consecutive pair in learning order, the earlier concept at the left) or
    ``both`` (also the later concept at the left)."""
    n_gen: int = 4
    """Images generated per prompt (seeds seed..seed+n_gen-1)."""
    prompts_per_concept: int = 2
    """Single-concept prompts (contexts) per concept."""
    gen_steps: int = 20
    guidance: float = 4.0
    seed: int = 0
    """Generation seed (images of a prompt use seeds seed..seed+n_gen-1) and the references' seed."""
    train_seeds: tuple[int, ...] = (0, 1, 2)
    """Learning seeds: every (method, sequence) is learned once per seed; the table gives mean +- sd over seeds."""
    general_prompts: int = 8
    """World captions (no concepts) whose alignment is measured before and after a tenant's whole sequence."""
    cones_steps: int = 20
    """Cones: score-accumulation steps per concept (it learns no values: a few steps of ``W * dL/dW`` suffice;
    docs/cones.md)."""
    cones_ratio: float = 0.02
    """Cones: at most this fraction of each K/V layer is shut per concept."""
    out_dir: str = "eval-out"
    """Where the table (table.md, results.json) and image grids (PNG) go."""

    def __post_init__(self) -> None:
        from cns_ray.world.concepts import SEQUENCES

        p = []
        bad = [s for s in self.sequences if s not in SEQUENCES]
        if bad or not self.sequences:
            p.append(f"sequences={self.sequences} must be a non-empty subset of {sorted(SEQUENCES)}")
        badm = [m for m in self.methods if m not in METHODS]
        if badm or not self.methods:
            p.append(f"methods={self.methods} must be a non-empty subset of {METHODS}")
        if self.concepts_per_sequence is not None and self.concepts_per_sequence < 1:
            p.append(f"concepts_per_sequence={self.concepts_per_sequence} must be >= 1 or None")
        if not self.train_seeds or len(set(self.train_seeds)) != len(self.train_seeds):
            p.append(f"train_seeds={self.train_seeds} must be distinct and non-empty")
        for name in ("steps", "batch_size", "n_ref", "n_gen", "prompts_per_concept", "gen_steps", "general_prompts",
                     "cones_steps"):
            if getattr(self, name) < 1:
                p.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("token_lr", "weight_lr", "naive_weight_lr"):
            if getattr(self, name) < 0:
                p.append(f"{name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.pairs <= 24:
            p.append(f"pairs={self.pairs} must be in [0, 24] (two-object references per concept)")
        if self.pair_orders not in ("sequence", "both"):
            p.append(f"pair_orders={self.pair_orders!r} must be 'sequence' or 'both'")
        if not 0 < self.cones_ratio <= 1:
            p.append(f"cones_ratio={self.cones_ratio} must be in (0, 1], e.g. 0.02")
        if not 0 < self.select_ratio <= 1:
            p.append(f"select_ratio={self.select_ratio} must be in (0, 1]")
        if p:
            raise ConfigError("invalid EvalConfig: " + "; ".join(p))

    def concepts(self, sequence: str) -> tuple[str, ...]:
        from cns_ray.world.concepts import SEQUENCES

        names = SEQUENCES[sequence]
        return names if self.concepts_per_sequence is None else names[: self.concepts_per_sequence]

    def to_dict(self) -> dict:
        return asdict(self)


def quick(cfg: EvalConfig) -> EvalConfig:
    """The ``--quick`` protocol (tests, a first look; a few minutes on 2 cores): one sequence's first 3 concepts,
    CNS and two baselines, one seed, few steps and images. Its numbers show the mechanics, not the method."""
    from dataclasses import replace

    return replace(cfg, sequences=cfg.sequences[:1], concepts_per_sequence=3, methods=("cns", "cns_noreg", "fusion"),
                   train_seeds=cfg.train_seeds[:1], steps=min(cfg.steps, 40), n_gen=2, prompts_per_concept=1,
                   gen_steps=min(cfg.gen_steps, 8), general_prompts=2, n_ref=4)
