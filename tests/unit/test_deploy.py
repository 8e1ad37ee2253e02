"""deploy/, cluster.yaml and the Dockerfile agree: one Ray version, the image the manifests name is the one the
Dockerfile builds, and KubeRay autoscales pods where Serve autoscales replicas."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _manifests():
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "deploy" / "kuberay").glob("*.yaml"))}


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]


def test_one_ray_version_everywhere():
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    pins = [m for c in cluster["setup_commands"] for m in re.findall(r"ray\[[^\]]*\]==([\d.]+)", c)]
    assert len(pins) == 1, cluster["setup_commands"]
    ray_at = next(i for i, c in enumerate(cluster["setup_commands"]) if "ray[" in c)
    project_at = next(i for i, c in enumerate(cluster["setup_commands"]) if "cns-ray" in c)
    assert ray_at < project_at
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG RAY_VERSION=([\d.]+)$", docker, re.M).group(1) == pins[0]
    for name, doc in _manifests().items():
        assert _cluster_spec(doc)["rayVersion"] == pins[0], name


def test_manifests_name_the_image_the_dockerfile_builds():
    docker = (ROOT / "Dockerfile").read_text()
    tag = re.search(r"docker build -t (\S+) \.", docker).group(1)
    for name, doc in _manifests().items():
        spec = _cluster_spec(doc)
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
        assert images == {tag}, (name, images)


def test_kuberay_autoscales_where_serve_autoscales():
    for name, doc in _manifests().items():
        if doc["kind"] != "RayService":
            continue
        serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
        autoscaled = any(a.get("args", {}).get("autoscaling") for a in serve_cfg["applications"])
        spec = _cluster_spec(doc)
        assert autoscaled and spec.get("enableInTreeAutoscaling") is True, name
        gpu = [g for g in spec["workerGroupSpecs"] if g["maxReplicas"] > g["minReplicas"]]
        assert gpu, "a worker group must be able to grow"


def test_cluster_yaml_documents_the_heads_iam_needs():
    text = (ROOT / "cluster.yaml").read_text()
    for need in ("ec2:RunInstances", "ec2:TerminateInstances", "iam:PassRole", "s3:GetObject", "s3:PutObject"):
        assert need in text, need


def test_prometheus_scrapes_metrics_with_the_admin_key_the_server_accepts(tmp_path, monkeypatch):
    from cns_ray.errors import AuthError
    from cns_ray.serve.auth import KeyRing, hash_key

    prom = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheus.yaml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    serve_port = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())["http_options"]["port"]
    assert jobs["cns"]["static_configs"][0]["targets"] == [f"127.0.0.1:{serve_port}"]
    head = _cluster_spec(_manifests()["rayservice.yaml"])["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    keep = jobs["cns-kuberay"]["relabel_configs"][0]
    assert keep["action"] == "keep" and ports[keep["regex"]] == serve_port
    # what Prometheus sends (`Authorization: <type> <file's contents>`) passes the server's admin check; a tenant's
    # key and a missing file's empty credentials do not
    admin, tenant = "op-key-0123456789", "k-acme-0123456789"
    ring = KeyRing({hash_key(tenant): "acme"}, hash_key(admin))
    for job in jobs.values():
        auth = job["authorization"]
        assert job["metrics_path"] == "/metrics" and auth["credentials_file"].startswith("/etc/prometheus/")
        (tmp_path / "key").write_text(admin + "\n")
        ring.authenticate_admin(f"{auth['type']} {(tmp_path / 'key').read_text().strip()}", None)
        with pytest.raises(AuthError) as e:
            ring.authenticate_admin(f"{auth['type']} {tenant}", None)
        assert e.value.status == 403
        with pytest.raises(AuthError):
            ring.authenticate_admin(f"{auth['type']} ", None)
