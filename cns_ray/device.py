"""Which torch device a process computes on, and which ``torch.distributed`` backend a training run uses: one
decision for Ray Train workers, calibration scorer actors and serving replicas.

- GPU wanted and CUDA present: the device Ray assigned (``ray.train.torch.get_device()`` in a Train worker; the
  first visible CUDA device elsewhere: Ray sets ``CUDA_VISIBLE_DEVICES`` to the process's GPUs).
- GPU wanted but no CUDA in this process (a node that advertises a ``GPU`` resource with a CPU-only torch, or a
  local test cluster declared with ``num_gpus``): the CPU, with one warning line, and ``gloo`` instead of NCCL for
  the process group (NCCL needs CUDA; asking for it there fails at ``init_process_group``).
- Otherwise: the CPU, ``gloo``.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

GPU_BACKEND = "nccl"
CPU_BACKEND = "gloo"


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def choose_device(
    want_gpu: bool,
    *,
    cuda: bool | None = None,
    assigned: Callable[[], torch.device] | None = None,
    what: str = "this process",
) -> torch.device:
    """The device to compute on. ``cuda``: whether CUDA works here (default: ask torch). ``assigned``: where Ray
    put this process (``ray.train.torch.get_device`` in a Train worker); only called when CUDA is there, since Ray
    reports ``cuda:N`` for an assigned GPU resource whether or not torch can use it."""
    if not want_gpu:
        return torch.device("cpu")
    cuda = cuda_available() if cuda is None else cuda
    if not cuda:
        log.warning(
            "%s was given a GPU but torch %s has no CUDA here: computing on the CPU (install a CUDA build of torch "
            "on GPU nodes, or drop --gpu / use_gpu)", what, torch.__version__,
        )
        return torch.device("cpu")
    device = assigned() if assigned is not None else torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def process_group_backend(use_gpu: bool, cuda: bool) -> str:
    """``nccl`` when the workers compute on CUDA, else ``gloo`` (for ``TorchConfig(backend=...)``)."""
    return GPU_BACKEND if use_gpu and cuda else CPU_BACKEND


def train_worker_device(use_gpu: bool) -> torch.device:
    """Inside a Ray Train worker: the device Ray Train assigned to it (or the CPU, see :func:`choose_device`)."""
    import ray.train.torch

    return choose_device(use_gpu, assigned=ray.train.torch.get_device, what="this Ray Train worker")


def workers_have_cuda(resources: dict[str, float]) -> bool:
    """Whether a process scheduled with ``resources`` (a Train worker's) sees CUDA: one small Ray task on such a
    node. Ray Train picks the process-group backend in the driver, which may run on a CPU-only head."""
    import ray

    probe = ray.remote(cuda_available).options(
        num_cpus=0, num_gpus=resources.get("GPU", 0), resources={k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
    )
    return bool(ray.get(probe.remote()))


def _ray_gpu_ids() -> list:
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return []


def process_device(what: str = "this process") -> torch.device:
    """For a Ray actor or replica (or a plain process): a GPU when Ray assigned it one (``num_gpus``) or CUDA is
    there; Ray hides the GPUs of a node from a process that asked for none (``CUDA_VISIBLE_DEVICES=""``)."""
    return choose_device(bool(_ray_gpu_ids()) or cuda_available(), what=what)
