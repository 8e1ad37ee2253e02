"""Shared fixtures. Everything binds to 127.0.0.1; nothing is downloaded."""

from __future__ import annotations

import os
import socket

# Set before anything imports ray/transformers/diffusers.
for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_k] = _v
# Ray Train's controller polls its workers every 2 s by default; every Ray Train run pays up to one poll at each
# start, finish and worker death. Polling at 0.5 s cuts test_train_run alone from 72 s to 47 s with the same
# outcomes. Inherited by the CLIs and simulated-cluster nodes the tests start; a user's own setting wins.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import pytest  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_base():
    """The embedded default base model ``tiny`` (shipped, trained on the toy world; 32 px), shared: tests must
    leave its weights as they found them."""
    from cns_ray.models import TINY, load_base_model

    return load_base_model(TINY)


@pytest.fixture()
def fresh_tiny():
    """A private ``tiny`` base model (the default) a test may modify."""
    from cns_ray.models import TINY, load_base_model

    return load_base_model(TINY)


@pytest.fixture(scope="session")
def tiny_random():
    """``tiny-random`` (random weights built from configs; 64 px, cross_attention_dim 32), shared: for tests of
    that builder's specific architecture. Tests must leave its weights as they found them."""
    from cns_ray.models import TINY_RANDOM, load_base_model

    return load_base_model(TINY_RANDOM)


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server over HTTP on 127.0.0.1 (a real server, not an in-process mock). Yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3_env(moto_server, monkeypatch):
    """AWS environment pointing at the moto server, and a fresh bucket. Yields the bucket name."""
    import uuid

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    import boto3

    bucket = f"cns-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield bucket


def init_local_ray() -> None:
    """Start the session's local Ray (127.0.0.1 only) unless this process is connected to one. A module that needs
    another cluster (tests/sim_cluster.py) shuts it down and calls this again when it is done."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            num_cpus=4,
            log_to_driver=False,
            configure_logging=False,
        )


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster bound to 127.0.0.1 (shared by the session's integration tests)."""
    import ray

    init_local_ray()
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()

