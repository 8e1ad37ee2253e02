"""One device decision for Train workers, scorer actors and replicas (cns_ray/device.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from cns_ray.device import choose_device, process_group_backend, train_worker_device


def _never() -> torch.device:
    raise AssertionError("the assigned device must not be asked for here")


def test_gpu_with_cuda_takes_the_assigned_device():
    assert choose_device(True, cuda=True, assigned=lambda: torch.device("cuda", 3)) == torch.device("cuda", 3)


def test_no_gpu_wanted_is_the_cpu():
    assert choose_device(False, cuda=True, assigned=_never) == torch.device("cpu")


def test_gpu_without_cuda_is_the_cpu_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="cns_ray.device"):
        assert choose_device(True, cuda=False, assigned=_never, what="worker 0") == torch.device("cpu")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "worker 0" in lines[0] and "CUDA" in lines[0] and "--gpu" in lines[0]


@pytest.mark.parametrize("use_gpu, cuda, backend", [(True, True, "nccl"), (True, False, "gloo"), (False, True, "gloo"), (False, False, "gloo")])
def test_process_group_backend(use_gpu, cuda, backend):
    assert process_group_backend(use_gpu, cuda) == backend


def test_train_worker_device_is_ray_trains_get_device(monkeypatch):
    """On a CPU machine: pretend CUDA works and Ray Train assigned cuda:5; the worker's device must be that one,
    taken from ``ray.train.torch.get_device()`` (not a hard-coded ``cuda``)."""
    import ray.train.torch

    import cns_ray.device as device

    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cuda", 5))
    assert train_worker_device(True) == torch.device("cuda", 5)
    assert train_worker_device(False) == torch.device("cpu")


def test_process_device_on_a_cpu_machine_is_quiet(caplog):
    """No GPU assigned and no CUDA: the CPU, without the 'was given a GPU' warning (scorer actors, replicas)."""
    from cns_ray.device import cuda_available, process_device

    if cuda_available():
        pytest.skip("a CUDA machine")
    with caplog.at_level(logging.WARNING, logger="cns_ray.device"):
        assert process_device("scorer") == torch.device("cpu")
    assert caplog.records == []


def test_gpu_on_a_local_ray_without_gpus_is_refused_and_an_attached_cluster_is_left_to_wait():
    """``cns learn --gpu`` / ``cns serve --gpu``: a private local Ray with no GPU would never place the run, so it is
    refused with the fix; an attached cluster may add GPU nodes, so it is not."""
    from cns_ray.errors import ConfigError
    from cns_ray.jobs.ray_env import check_gpu_request, gpus_available

    if gpus_available() > 0:
        pytest.skip("connected to a Ray with GPUs")
    with pytest.raises(ConfigError, match=r"0 GPUs.*--address"):
        check_gpu_request(True, "local")
    check_gpu_request(True, "attached")
    check_gpu_request(False, "local")


@pytest.mark.parametrize("flag, use_gpu", [([], None), (["--gpu"], True), (["--no-gpu"], False)])
def test_serve_gpu_flag(flag, use_gpu):
    from cns_ray.cli import build_parser

    assert build_parser().parse_args(["serve", *flag]).gpu is use_gpu
