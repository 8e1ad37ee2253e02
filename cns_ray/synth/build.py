"""Building the concept library: each world instance learned from the base (CNS), one Ray task each, resumable.

The driver (:func:`build_library`) lists the ``n`` library instances (:func:`cns_ray.world.concepts.library_concepts`),
skips those the library's manifest already holds for this base, recovers those the store holds but the manifest
does not (a driver killed between a task's commit and the manifest update), and runs the rest as Ray tasks, a
bounded number in flight, recording each finished entry in the manifest as it arrives. A task
(:func:`learn_entry`) renders the instance's references, learns it with :class:`~cns_ray.learn.learner.CNSLearner`
into its own pseudo-tenant of the library store, and embeds its references with the metric model's image encoder.
A task that finds its entry already committed returns it without learning again.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from cns_ray.config import LearnerConfig
from cns_ray.errors import CommitConflictError, ConfigError
from cns_ray.synth.library import ConceptLibrary, LibraryEntry, reference_embedding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LibraryConfig:
    """What the library holds and how each entry is learned."""

    n: int = 200
    """Library instances (the first n of ``library_concepts(n_pool, seed)``; never a named concept)."""
    steps: int = 100
    """CNS steps per entry (learning rates: the base's cns_defaults.json)."""
    n_images: int = 6
    """Rendered references per entry."""
    seed: int = 0
    """Learning seed of every entry (and the reference contexts' seed)."""
    pool_seed: int = 0
    """Seed of the instance draw (library_concepts)."""
    workers: int = 2
    """Tasks in flight; 0 = learn the entries one by one in this process, without Ray (a machine too loaded or too
    small to start one)."""
    cpus_per_task: float = 1.0
    metric: str = "toy"
    """Metric model whose image encoder embeds the references."""
    reg_lambda: float = 1.0
    """``L_reg`` weight of every entry's learning (recorded per entry; a library is not resumed at another value)."""

    def __post_init__(self) -> None:
        p = []
        if self.reg_lambda < 0:
            p.append(f"reg_lambda={self.reg_lambda} must be >= 0")
        if self.n < 1 or self.steps < 1 or not 1 <= self.n_images <= 24 or self.workers < 0 or self.cpus_per_task <= 0:
            p.append(f"n={self.n}, steps={self.steps}, must be >= 1, workers={self.workers} >= 0, n_images={self.n_images} in "
                     f"[1, 24], cpus_per_task={self.cpus_per_task} > 0")
        if p:
            raise ConfigError("invalid LibraryConfig: " + "; ".join(p))


@functools.lru_cache(maxsize=2)
def _base(spec: str):
    """One base model per worker process (Ray reuses workers across tasks): loaded once, never written."""
    from cns_ray.models import load_base_model

    return load_base_model(spec)


@functools.lru_cache(maxsize=2)
def _metric(spec: str):
    from cns_ray.eval.metric_model import load_metric_model

    return load_metric_model(spec)


def _entry_from_state(lib: ConceptLibrary, concept, version: int, cfg: LibraryConfig, metric, images, seconds: float) -> LibraryEntry:
    state = lib.store.load(concept.name, version)
    emb = reference_embedding(metric, images)
    rec = state.concept(concept.name)
    return LibraryEntry(name=concept.name, shape=concept.shape, look=asdict(concept.look), token=concept.token,
                        version=int(version), base_id=lib.base_id, embedding=[float(x) for x in emb],
                        steps=int(rec.stats.get("steps", cfg.steps)), seed=cfg.seed, n_images=cfg.n_images,
                        seconds=round(seconds, 3), nnz=int(state.delta.nnz), metric=cfg.metric,
                        extra={"reg_lambda": float(rec.stats.get("reg_lambda", cfg.reg_lambda))})


def learn_entry(base, lib: ConceptLibrary, concept, cfg: LibraryConfig, learner_cfg: LearnerConfig, general, metric) -> LibraryEntry:
    """Learn one library instance from the base and commit it (idempotent: a committed entry is only re-read)."""
    from cns_ray.learn.learner import CNSLearner, ConceptRequest
    from cns_ray.world import concepts as wc

    images = torch.from_numpy(wc.reference_set(concept, cfg.n_images, cfg.seed)[0])  # uint8 [N, H, W, 3]
    head = lib.store.head(concept.name)
    if head is not None:
        return _entry_from_state(lib, concept, head, cfg, metric, images.numpy(), 0.0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        folder = wc.write_reference_folder(concept, d, cfg.n_images, cfg.seed)
        req = ConceptRequest(tenant=concept.name, concept=concept.name, class_word=concept.shape, images=str(folder),
                             token=concept.token)
        learner = CNSLearner(base, lib.store, req, learner_cfg, general)
        while learner.step_index < learner.total_steps:
            learner.step()
        try:
            version = learner.commit()
        except CommitConflictError:  # another build committed this entry meanwhile: theirs stands
            version = lib.store.head(concept.name)
    return _entry_from_state(lib, concept, version, cfg, metric, images.numpy(), time.perf_counter() - t0)


def _task(store_uri: str, base_spec: str, concept, cfg: LibraryConfig, learner_cfg: dict, general) -> dict:
    torch.set_num_threads(1)  # a shared small machine: oversubscribed threads were ~10x slower here
    base = _base(base_spec)
    lib = ConceptLibrary(store_uri, base.base_id)
    return asdict(learn_entry(base, lib, concept, cfg, LearnerConfig.from_dict(learner_cfg), general, _metric(cfg.metric)))


Progress = Callable[[int, int, LibraryEntry, float], None]


def build_library(store_uri: str, base_spec: str, cfg: LibraryConfig, progress: Progress | None = None) -> dict:
    """Build (or finish) the library of ``base_spec`` under ``store_uri``; needs a connected Ray.
    Returns a summary: learned, skipped, recovered, seconds, seconds per learned entry."""
    from cns_ray.jobs.calibrate import general_masks
    from cns_ray.jobs.train import resolve_learner_config
    from cns_ray.world import concepts as wc

    t0 = time.perf_counter()
    base = _base(base_spec)
    lib = ConceptLibrary(store_uri, base.base_id)
    learner_cfg = resolve_learner_config(LearnerConfig(steps=cfg.steps, token_lr=None, weight_lr=None, seed=cfg.seed,
                                                       checkpoint_every=0, reg_lambda=cfg.reg_lambda), base_spec)
    done = lib.entries()
    other = sorted({float(e.extra.get("reg_lambda", 1.0)) for e in done.values()} - {float(cfg.reg_lambda)})
    if other:
        raise ConfigError(f"library {lib.uri} was learned at reg_lambda={other}, not {cfg.reg_lambda}: finish it at "
                          "that value, or build this one into another store (--store)")
    todo, recovered = [], 0
    for c in wc.library_concepts(cfg.n, cfg.pool_seed):
        if c.name in done:
            e = done[c.name]
            if (e.shape, e.look) != (c.shape, asdict(c.look)):
                raise ConfigError(f"library entry {c.name!r} holds another instance ({e.shape} {e.look}) than pool_seed="
                                  f"{cfg.pool_seed} draws: rebuild into another store, or keep the pool seed it was built with")
            continue
        if lib.store.head(c.name) is not None:  # committed, not yet in the manifest
            lib.add(learn_entry(base, lib, c, cfg, learner_cfg, None, _metric(cfg.metric)))
            recovered += 1
            continue
        todo.append(c)
    skipped = cfg.n - len(todo) - recovered
    log.info("library %s: %d to learn, %d already done, %d recovered", lib.uri, len(todo), skipped, recovered)
    general = general_masks(base, lib.store, learner_cfg.selection)
    finished, learn_seconds = 0, 0.0
    if cfg.workers == 0:
        torch.set_num_threads(1)
        for c in todo:
            entry = learn_entry(base, lib, c, cfg, learner_cfg, general, _metric(cfg.metric))
            lib.add(entry)
            finished += 1
            learn_seconds += entry.seconds
            if progress is not None:
                progress(finished, len(todo), entry, time.perf_counter() - t0)
        todo = []
    if todo:
        import ray

        gref = ray.put(general)
        task = ray.remote(num_cpus=cfg.cpus_per_task, max_retries=2)(_task)
    pending, waiting = {}, list(todo)
    while waiting or pending:
        while waiting and len(pending) < cfg.workers:
            c = waiting.pop(0)
            pending[task.remote(store_uri, base_spec, c, cfg, learner_cfg.to_dict(), gref)] = c
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            pending.pop(ref)
            entry = LibraryEntry(**ray.get(ref))
            lib.add(entry)
            finished += 1
            learn_seconds += entry.seconds
            if progress is not None:
                progress(finished, len(todo), entry, time.perf_counter() - t0)
    total = time.perf_counter() - t0
    return {"library": lib.uri, "base_id": base.base_id, "learned": finished, "skipped": skipped, "recovered": recovered,
            "entries": len(lib.entries()), "seconds": round(total, 1),
            "seconds_per_entry": round(learn_seconds / finished, 2) if finished else None}
