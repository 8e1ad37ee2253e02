"""One learning run = one Ray Train ``TorchTrainer`` run; the driver commits the tenant version.

Workers load the base model and the store, build a :class:`CNSLearner`, resume from the latest reported checkpoint
(``ray.train.get_checkpoint()``), step (gradients all-reduced when there are several workers), and report a
checkpoint every ``cfg.checkpoint_every`` steps under ``<store>/checkpoints/<tenant>/<run_name>``. The last report
carries the learner's result (the new cumulative :class:`TenantState`). Only after ``fit()`` succeeds does the
driver commit it, with the parent it resolved up front: exactly one version, only on success (docs/design.md
invariant 6). A killed worker is restarted by Ray Train (``FailureConfig(max_failures)``) and resumes.

Deterministic input errors (:class:`CNSError` raised while setting up or stepping) are not retried: the worker
reports them in a final checkpoint and the driver re-raises them with their type and message.

A run with the same ``run_name`` and store resumes the previous run's checkpoints (Ray Train V2 restores its
checkpoint manager from ``storage_path/name``): a resubmitted job picks up where the killed one stopped.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, replace
from typing import Callable

import ray

from cns_ray import errors as cns_errors
from cns_ray.config import LearnerConfig, StoreConfig
from cns_ray.errors import CNSError, NotFoundError
from cns_ray.jobs.inputs import ImagesSpec
from cns_ray.store.layout import checkpoint_location as store_checkpoint_location, root_location

log = logging.getLogger(__name__)

StatusCallback = Callable[[int, int, float], None]
"""``status_cb(step, total, loss)``, called in the driver process as the run progresses."""

RESULT_FILE = "result.pt"
ERROR_FILE = "error.json"
META_FILE = "meta.json"
LEARNER_FILE = "learner.pt"
POLL_S = 0.5


class TrainingRunError(CNSError, RuntimeError):
    """The Ray Train run failed (worker failures beyond ``max_failures``, or an unexpected error)."""


@ray.remote(num_cpus=0)
class _ProgressRelay:
    """Rank 0 pushes (step, total, loss) here; the driver polls it. Holds only the latest value."""

    def __init__(self) -> None:
        self._last: tuple[int, int, float] | None = None

    def update(self, step: int, total: int, loss: float) -> None:
        self._last = (step, total, loss)

    def get(self) -> tuple[int, int, float] | None:
        return self._last


def _resolve_parent(store, request) -> int | None:
    """The version this run builds on: the request's, checked to exist, else the tenant's head (None = none)."""
    try:
        history = store.history(request.tenant)
    except NotFoundError:
        history = []
    versions = [v.version for v in history]
    if request.parent_version is None:
        return store.head(request.tenant) if versions else None
    if request.parent_version not in versions:
        known = f"versions {versions[0]}..{versions[-1]}" if versions else "no versions yet"
        raise NotFoundError(
            f"tenant {request.tenant!r} has no version {request.parent_version} ({known}): give an existing "
            "parent_version, or none to build on the tenant's head"
        )
    return request.parent_version


def _absolute(uri: str) -> str:
    """Local store folders as absolute paths (Ray workers run in other working directories)."""
    loc = root_location(uri)  # the one parsed location type (cns_ray.store.layout)
    return uri if loc.is_s3 else loc.path


def checkpoint_location(store_uri: str, tenant: str):
    """(storage_path, storage_filesystem or None) for a tenant's Ray Train checkpoints under the store."""
    return store_checkpoint_location(store_uri, tenant)  # the store owns its layout


def resolve_learner_config(cfg: LearnerConfig, base_model: str) -> LearnerConfig:
    """``cfg`` with the settings left to the base model (None) filled from its ``cns_defaults.json`` (one log line
    says where they came from); unchanged when the user gave them all."""
    if cfg.unresolved() or cfg.resolution is None:
        from cns_ray.models.defaults import base_defaults, log_defaults

        defaults = base_defaults(base_model)
        if cfg.unresolved():
            log_defaults(base_model, defaults)
        cfg = cfg.with_base_defaults(defaults)
    return cfg


def run_learning(
    request,
    cfg: LearnerConfig,
    store_uri: str,
    base_model: str,
    *,
    run_name: str | None = None,
    status_cb: StatusCallback | None = None,
) -> int:
    """Learn ``request``'s concept with Ray Train and commit it. Returns the committed version.

    Needs a connected Ray (``ray.init`` / ``cns_ray.jobs.ray_env.init_ray``). Raises the learner's
    :class:`CNSError` for bad input (nothing committed), :class:`TrainingRunError` when the run fails, and
    :class:`CommitConflictError` when someone else moved the tenant's head meanwhile.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cns_ray.device import process_group_backend, workers_have_cuda

    from cns_ray.store import ConceptStore

    store_uri = _absolute(store_uri)
    cfg = resolve_learner_config(cfg, base_model)
    store = ConceptStore(StoreConfig(uri=store_uri))
    parent = _resolve_parent(store, request)
    images = ImagesSpec.parse(request.images).for_submission()  # local folders absolute: workers run in another cwd
    request = replace(request, parent_version=parent, images=images)
    run_name = run_name or f"{request.concept}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    storage_path, storage_fs = checkpoint_location(store_uri, request.tenant)
    relay = None
    if status_cb is not None:  # beside the driver: a lost worker node must not take the progress relay along
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        relay = _ProgressRelay.options(scheduling_strategy=here).remote()

    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    backend = process_group_backend(cfg.use_gpu, cfg.use_gpu and workers_have_cuda(resources))
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "request": asdict(request),
            "cfg": cfg.to_dict(),
            "store_uri": store_uri,
            "base_model": base_model,
            "relay": relay,
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend=backend),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    log.info(
        "learning %s/%s on parent %s: run %s (%d worker(s), gpu=%s, process group %s)",
        request.tenant, request.concept, parent, run_name, cfg.num_workers, cfg.use_gpu, backend,
    )
    stop = threading.Event()
    poller = None
    if relay is not None:
        poller = threading.Thread(target=_poll_progress, args=(relay, status_cb, stop), daemon=True)
        poller.start()
    try:
        result = trainer.fit()
    except Exception as e:
        raise TrainingRunError(f"learning run {run_name!r} for {request.tenant}/{request.concept} failed: {e}") from e
    finally:
        stop.set()
        if poller is not None:
            poller.join(timeout=5)
        if relay is not None:
            ray.kill(relay)

    state = _final_state(result, run_name)
    version = store.commit(request.tenant, state, parent=parent, message=f"learn {request.concept} (run {run_name})")
    log.info("committed %s version %d (parent %s)", request.tenant, version, parent)
    _delete_run(storage_path, storage_fs, run_name)
    return version


def _poll_progress(relay, status_cb: StatusCallback, stop: threading.Event) -> None:
    last = None
    while True:
        done = stop.wait(POLL_S)
        try:
            cur = ray.get(relay.get.remote(), timeout=10)
        except Exception:  # the relay is gone: the run is over
            return
        if cur is not None and cur != last:
            last = cur
            try:
                status_cb(*cur)
            except Exception:
                log.exception("status callback failed")
        if done:
            return


def _final_state(result, run_name: str):
    """Read the worker's final checkpoint: the learner's TenantState, or the input error it reported."""
    import torch

    ckpt = result.checkpoint
    if ckpt is None:
        raise TrainingRunError(f"learning run {run_name!r} ended without a final checkpoint (result: {result.metrics})")
    with ckpt.as_directory() as d:
        err_path = os.path.join(d, ERROR_FILE)
        if os.path.exists(err_path):
            with open(err_path) as f:
                err = json.load(f)
            cls = getattr(cns_errors, err.get("type", ""), None)
            known = isinstance(cls, type) and issubclass(cls, CNSError)
            if not known or issubclass(cls, cns_errors.DeltaValidationError):
                cls = TrainingRunError  # DeltaValidationError takes a problem list: keep the text as is
            raise cls(err["message"])
        res_path = os.path.join(d, RESULT_FILE)
        if not os.path.exists(res_path):
            raise TrainingRunError(f"learning run {run_name!r}: its last checkpoint {ckpt.path} has no {RESULT_FILE}")
        return torch.load(res_path, weights_only=False)


def _delete_run(storage_path: str, storage_fs, run_name: str) -> None:
    """Checkpoints are only needed until the commit; remove them (best effort)."""
    import pyarrow.fs as pafs

    fs = storage_fs or pafs.LocalFileSystem()
    try:
        fs.delete_dir(f"{storage_path.rstrip('/')}/{run_name}")
    except Exception as e:  # a leftover folder is harmless
        log.warning("could not delete checkpoints of run %s under %s: %s", run_name, storage_path, e)


# ---------------------------------------------------------------- worker side


def _allreduce_mean(grads: list) -> None:
    """Average gradients across workers in place, in one flat all-reduce."""
    import torch
    import torch.distributed as dist

    present = [g for g in grads if g is not None]
    if not present:
        return
    flat = torch.cat([g.reshape(-1) for g in present])  # [sum of numels]
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in present:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _report(metrics: dict, files: dict[str, Callable[[str], None]]) -> None:
    """ray.train.report with a checkpoint holding ``files`` (name -> writer(path)); a temp dir per report."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="cns-ckpt-") as d:
        for name, write in files.items():
            write(os.path.join(d, name))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d) if files else None)


def _write_json(obj: dict) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "w") as f:
            json.dump(obj, f)

    return write


def _torch_save(obj) -> Callable[[str], None]:
    def write(path: str) -> None:
        import torch

        torch.save(obj, path)

    return write


def _restore(learner) -> list[int]:
    """Load the latest checkpoint into ``learner``; returns the steps this run has resumed from so far.

    Rank 0's learner state serves every rank: the learner derives its randomness from (seed, rank, step).
    """
    import ray.train
    import torch

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return []
    with ckpt.as_directory() as d:
        with open(os.path.join(d, META_FILE)) as f:
            meta = json.load(f)
        learner.load_state_dict(torch.load(os.path.join(d, LEARNER_FILE), weights_only=False))
    log.info("resumed from checkpoint at step %d", meta["step"])
    return [*meta.get("resumes", []), int(meta["step"])]


def _backend_name() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def _train_loop(config: dict) -> None:
    import ray.train
    import torch

    from cns_ray.jobs.inputs import INPUTS_KEY, materialize_images, recorded_inputs
    from cns_ray.device import train_worker_device
    from cns_ray.learn import ConceptRequest, make_learner
    from cns_ray.models import load_base_model
    from cns_ray.store import ConceptStore

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = LearnerConfig.from_dict(config["cfg"])
    request = ConceptRequest(**config["request"])
    relay = config.get("relay")
    images = None
    device = train_worker_device(cfg.use_gpu)  # the device Ray Train assigned (the CPU without CUDA)
    if device.type == "cpu":
        # A worker asks for a fraction of the cores; torch's default (all cores) oversubscribes them badly.
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    try:
        from cns_ray.jobs.calibrate import general_masks

        base = load_base_model(config["base_model"], device=str(device))
        store = ConceptStore(StoreConfig(uri=config["store_uri"]))
        images = materialize_images(request.images, config["store_uri"])
        # CNS: general neurons, cached in the store per (base, prompts, ratio); Cones needs none
        general = general_masks(base, store, cfg.selection) if cfg.method == "cns" else None
        learner = make_learner(base, store, replace(request, images=images.path), cfg, general=general, rank=rank)
        resumes = _restore(learner)
        grad_sync = _allreduce_mean if world > 1 else None
        total, every = learner.total_steps, cfg.checkpoint_every
        while learner.step_index < total:
            loss = float(learner.step(grad_sync))
            step = learner.step_index
            if rank == 0 and relay is not None:
                relay.update.remote(step, total, loss)
            if every and step % every == 0 and step < total:
                meta = {"step": step, "loss": loss, "resumes": resumes}
                files = {LEARNER_FILE: _torch_save(learner.state_dict()), META_FILE: _write_json(meta)}
                _report({"step": step, "total": total, "loss": loss}, files if rank == 0 else {})
        state = learner.result()
        for rec in state.concepts:
            if rec.name == request.concept:
                rec.stats = {**(rec.stats or {}), "resumed_from_steps": resumes, "train_workers": world,
                             "train_device": str(learner.device), "process_group": _backend_name(),
                             # which Ray actor (and node) made this result: placement checks against Ray's state API
                             "train_actor_id": ray.get_runtime_context().get_actor_id(),
                             "train_node_id": ray.get_runtime_context().get_node_id(),
                             INPUTS_KEY: recorded_inputs(request, cfg)}  # what `cns concepts purge` replays
        files = {RESULT_FILE: _torch_save(state), META_FILE: _write_json({"step": total, "resumes": resumes})}
        _report({"step": total, "total": total, "loss": loss, "final": True}, files if rank == 0 else {})
    except CNSError as e:
        # Deterministic (bad input, conflicting token, ...): retrying would fail the same way. Report and stop.
        log.error("learning %s/%s failed: %s", request.tenant, request.concept, e)
        err = {"type": type(e).__name__, "message": str(e)}
        _report({"step": -1, "error": str(e), "final": True}, {ERROR_FILE: _write_json(err)} if rank == 0 else {})
    finally:
        if images is not None:
            images.cleanup()
