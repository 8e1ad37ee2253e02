"""Multi-node on one machine (issue 15): a head without GPU + 3 nodes with one simulated GPU each
(tests/sim_cluster.py), the concept store on moto's S3 server. Calibration, learning and serving as on a GPU cluster:
placement, concurrency and node loss, each placement read from Ray's state API.

The torch here has no CUDA: processes given a GPU compute on the CPU (cns_ray/device.py). What only a real GPU can
show (CUDA kernels, NCCL, fp16 speed, GPU memory) is listed in the README's "Multi-node, tested on one machine".
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sim_cluster import listeners_beyond_loopback, sim_cluster  # noqa: F401  (the module's cluster fixture)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]  # `make test-cluster`; `make test` (CI) leaves it out

CLI = [sys.executable, "-m", "cns_ray.cli"]


def _cli(sim, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], env=sim.env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"cns {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _gpus(required: dict) -> float:
    """GPUs an actor holds, from its state-API ``required_resources`` (in a placement group bundle ``i`` they are
    named ``GPU_group_{i}_{pg}``)."""
    import re

    return required.get("GPU", 0) + sum(v for k, v in required.items() if re.fullmatch(r"GPU_group_\d+_[0-9a-f]+", k))


def test_calibration_puts_one_scorer_on_each_gpu_node_and_matches_in_process(sim_cluster, tiny_base):
    """``cns calibrate --actors 3 --address`` on the cluster: three scorer actors, one per GPU node (none on the
    head), and the cached masks equal the single-process ones bit for bit."""
    from cns_ray.config import SelectionConfig, StoreConfig
    from cns_ray.select import calib_key, general_masks_local, load_prompts
    from cns_ray.store import ConceptStore

    sim = sim_cluster
    gpu_nodes = sim.gpu_node_ids()
    assert len(gpu_nodes) == 3 and sim.head_id() not in gpu_nodes
    before = {a.actor_id for a in sim.actors("Scorer")}
    out = _cli(sim, "calibrate", "--actors", "3", "--address", sim.address, "--store", sim.store_uri,
               "--select-ratio", "0.3").stdout
    assert "scored in 3 shard(s)" in out, out

    scorers = [a for a in sim.actors("Scorer") if a.actor_id not in before]
    assert len(scorers) == 3, scorers
    assert {a.node_id for a in scorers} == gpu_nodes  # one on each GPU node, none on the head
    assert all(_gpus(a.required_resources) == 1 for a in scorers), [a.required_resources for a in scorers]

    cfg = SelectionConfig(select_ratio=0.3)
    prompts = load_prompts(None, tiny_base)
    cached = ConceptStore(StoreConfig(uri=sim.store_uri)).get_general_masks(
        tiny_base.base_id, calib_key(tiny_base.base_id, prompts, cfg))
    ref = general_masks_local(tiny_base, prompts, cfg)
    assert cached is not None and set(cached) == set(ref)
    assert all(torch.equal(cached[n], ref[n]) for n in ref)
    assert 0 < sum(int(m.sum()) for m in ref.values()) < sum(m.numel() for m in ref.values())  # a real mask


# ---------------------------------------------------------------------------------------------------- learning

import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "cns_ray" / "data" / "examples"
BASE = "tiny"  # the default base model; its base_id is read, never written down here
TRAIN_WORKER = "RayTrainWorker"  # Ray Train V2's worker actor class


def _learn_cfg(steps: int, checkpoint_every: int = 0, max_failures: int = 0):
    from cns_ray.config import LearnerConfig

    return LearnerConfig(steps=steps, checkpoint_every=checkpoint_every, batch_size=2, cpus_per_worker=0.5,
                         max_failures=max_failures, use_gpu=True)


class _Watch:
    """Polls the state API for ALIVE Ray Train workers: [(t, {actor_id: node_id})], until stopped."""

    def __init__(self, sim, every_s: float = 0.5):
        self.sim, self.every_s = sim, every_s
        self.snaps: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alive = {a.actor_id: a.node_id for a in self.sim.actors(TRAIN_WORKER, "ALIVE")}
            except Exception:  # noqa: BLE001 - a state API call timed out under load: skip this snapshot
                alive = None
            if alive is not None:
                self.snaps.append((time.monotonic(), alive))
            self._stop.wait(self.every_s)

    def seen(self, actor_id: str) -> tuple[float, float]:
        """(first, last) snapshot time the actor was ALIVE."""
        ts = [t for t, alive in self.snaps if actor_id in alive]
        assert ts, f"train worker {actor_id} never seen ALIVE in {len(self.snaps)} snapshots"
        return ts[0], ts[-1]


def _stats(store, tenant: str, concept: str) -> dict:
    return store.load(tenant).concept(concept).stats


def test_two_tenants_learn_at_once_on_two_gpu_nodes_and_a_third_waits_for_a_gpu(sim_cluster):
    """One GPU node is held by another workload (a placement group), so two GPUs are free. Through the scheduler:
    acme (two concepts; the first via `cns learn --gpu --queue`), bravo and charlie (one each). Two tenants' runs
    overlap on two different GPU nodes, the third tenant's run waits until a GPU is free, and acme's concepts commit
    in submission order, each on the previous head."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.state import list_placement_groups

    from cns_ray.config import StoreConfig
    from cns_ray.jobs.scheduler import get_or_create_scheduler
    from cns_ray.learn import ConceptRequest
    from cns_ray.store import ConceptStore

    sim = sim_cluster
    store = ConceptStore(StoreConfig(uri=sim.store_uri))
    held = placement_group([{"GPU": 1, "CPU": 0.1}])
    ray.get(held.ready(), timeout=120)
    held_node = next(p for p in list_placement_groups(address=sim.address, detail=True, limit=1000)
                     if p.placement_group_id == held.id.hex()).bundles[0]["node_id"]
    free_nodes = sim.gpu_node_ids() - {held_node}
    assert len(free_nodes) == 2
    cfg = _learn_cfg(steps=12)
    try:
        with _Watch(sim) as watch:
            out = _cli(sim, "learn", "--queue", "--no-wait", "--gpu", "--address", sim.address, "--store", sim.store_uri,
                       "--base-model", BASE, "--tenant", "acme", "--concept", "toy", "--images", str(EXAMPLES / "toy"),
                       "--class-word", "toy", "--steps", "12", "--checkpoint-every", "0", "--batch-size", "2",
                       "--cpus-per-worker", "0.5", "--max-failures", "0").stdout
            a1 = out.split("job ")[1].split()[0]
            sched = get_or_create_scheduler(sim.store_uri, BASE)  # the scheduler the CLI created, on the head

            def submit(tenant, concept):
                req = ConceptRequest(tenant, concept, concept, str(EXAMPLES / concept))
                return ray.get(sched.submit.remote(asdict(req), cfg.to_dict()))

            a2, b1, c1 = submit("acme", "mug"), submit("bravo", "backpack"), submit("charlie", "sculpture")
            jobs = {"a1": a1, "a2": a2, "b1": b1, "c1": c1}
            done = {k: ray.get(sched.wait.remote(j, 600)) for k, j in jobs.items()}
    finally:
        remove_placement_group(held)
    assert all(d["state"] == "succeeded" for d in done.values()), done

    # acme: submission order, each on the previous committed head; the others one version each
    assert [(v.version, v.parent, v.concepts) for v in store.history("acme")] == [(1, None, ["toy"]), (2, 1, ["toy", "mug"])]
    assert [v.concepts for v in store.history("bravo")] == [["backpack"]]
    assert [v.concepts for v in store.history("charlie")] == [["sculpture"]]

    # each run's worker, from the state API: on a free GPU node, holding its GPU; CPU compute over gloo
    stats = {"a1": _stats(store, "acme", "toy"), "a2": _stats(store, "acme", "mug"),
             "b1": _stats(store, "bravo", "backpack"), "c1": _stats(store, "charlie", "sculpture")}
    worker = {k: s["train_actor_id"] for k, s in stats.items()}
    for k, actor_id in worker.items():
        a = sim.actor(actor_id)
        assert a.class_name == TRAIN_WORKER and a.node_id in free_nodes and a.node_id == stats[k]["train_node_id"], (k, a)
        assert _gpus(a.required_resources) == 1, (k, a.required_resources)
        assert (stats[k]["train_device"], stats[k]["process_group"]) == ("cpu", "gloo"), stats[k]
    span = {k: watch.seen(a) for k, a in worker.items()}

    # never more than the two free GPUs in use
    assert max(len(alive) for _, alive in watch.snaps) <= 2
    # two tenants' first runs at the same time, on two different GPU nodes
    firsts = ("a1", "b1", "c1")
    together = [alive for _, alive in watch.snaps if sum(worker[k] in alive for k in firsts) == 2]
    assert together, f"no two tenants' runs seen running at once: {span}"
    pair = [k for k in firsts if worker[k] in together[0]]
    assert len({together[0][worker[k]] for k in pair}) == 2
    # the third tenant's run was waiting (its job running, no worker) and got a GPU only once one was free
    (third,) = set(firsts) - set(pair)
    assert span[third][0] > min(span[k][1] for k in pair), span
    assert _t(done[third]["started_at"]) < _t(done[pair[0]]["finished_at"]), done
    # acme's second concept ran only after its first had finished
    assert span["a2"][0] > span["a1"][1], span
    assert _t(done["a1"]["finished_at"]) <= _t(done["a2"]["started_at"])


def _t(s: str):
    from datetime import datetime

    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")


def _registered_checkpoint_step(sim, tenant: str, run_name: str) -> int | None:
    """The step of the latest checkpoint Ray Train's controller has registered for ``run_name`` (its checkpoint
    manager snapshot in the store), None before the first."""
    import json

    import boto3

    key = f"{sim.store_uri.split('/', 3)[3]}/checkpoints/{tenant}/{run_name}/checkpoint_manager_snapshot.json"
    try:
        body = boto3.client("s3", endpoint_url=sim.endpoint, region_name="us-east-1").get_object(Bucket=sim.bucket, Key=key)["Body"].read()
    except Exception:  # noqa: BLE001 - not written yet
        return None
    latest = json.loads(body).get("latest_checkpoint_result")
    return int(latest["metrics"]["step"]) if latest else None


def test_a_lost_gpu_node_resumes_the_run_elsewhere_from_its_checkpoint(sim_cluster):
    """Tenant delta queues two concepts. The GPU node running the first is removed (all its processes killed) right
    after Ray Train registered its first checkpoint: the run resumes on another GPU node from that checkpoint and
    commits exactly one version; the scheduler actor, on the head, still holds the queued second concept, which then
    commits on top."""
    import ray

    from cns_ray.config import StoreConfig
    from cns_ray.jobs.scheduler import get_or_create_scheduler
    from cns_ray.learn import ConceptRequest
    from cns_ray.store import ConceptStore

    sim = sim_cluster
    sim.restore()
    store = ConceptStore(StoreConfig(uri=sim.store_uri))
    sched = get_or_create_scheduler(sim.store_uri, BASE)
    (sched_actor,) = sim.actors("LearnScheduler", "ALIVE")
    assert sched_actor.node_id == sim.head_id()
    try:
        def submit(concept, cfg):
            req = ConceptRequest("delta", concept, concept, str(EXAMPLES / concept))
            return ray.get(sched.submit.remote(asdict(req), cfg.to_dict()))

        d1 = submit("toy", _learn_cfg(steps=150, checkpoint_every=5, max_failures=2))
        d2 = submit("mug", _learn_cfg(steps=4))
        deadline = time.monotonic() + 400
        while (seen := _registered_checkpoint_step(sim, "delta", f"toy-{d1}")) is None:
            st = ray.get(sched.status.remote(d1))
            assert st["state"] in ("queued", "running") and time.monotonic() < deadline, st
            time.sleep(0.5)
        (victim,) = sim.actors(TRAIN_WORKER, "ALIVE")  # the only run in flight: d2 waits for d1
        assert victim.node_id in sim.gpu_node_ids()
        sim.remove(victim.node_id)

        # the scheduler lives on, with its queue: d1 still running (being resumed), d2 still queued behind it
        assert [a.actor_id for a in sim.actors("LearnScheduler", "ALIVE")] == [sched_actor.actor_id]
        st1, st2 = ray.get(sched.status.remote(d1)), ray.get(sched.status.remote(d2))
        assert (st1["state"], st2["state"], st2["seq"]) == ("running", "queued", 2), (st1, st2)

        done1, done2 = ray.get(sched.wait.remote(d1, 600)), ray.get(sched.wait.remote(d2, 600))
    finally:
        sim.restore()
    assert (done1["state"], done1["version"], done2["state"], done2["version"]) == ("succeeded", 1, "succeeded", 2), (done1, done2)
    # exactly one version for the resumed run, and the queued concept on top of it
    assert [(v.version, v.parent, v.concepts) for v in store.history("delta")] == [(1, None, ["toy"]), (2, 1, ["toy", "mug"])]
    stats = _stats(store, "delta", "toy")
    (resumed,) = stats["resumed_from_steps"]  # one resume, from a checkpoint registered before the loss
    assert resumed >= seen and resumed % 5 == 0 and resumed < 150, (resumed, seen)
    assert sim.actor(victim.actor_id).state == "DEAD"
    after = sim.actor(stats["train_actor_id"])
    assert after.actor_id != victim.actor_id and after.node_id != victim.node_id and after.node_id in sim.gpu_node_ids()
    assert _gpus(after.required_resources) == 1
    # the runs' drivers (Ray Train's controllers sit beside them) stayed on the head: the loss took only the worker
    controllers = sim.actors("TrainController")
    assert controllers and {a.node_id for a in controllers} == {sim.head_id()}, controllers


# ---------------------------------------------------------------------------------------------------- serving

SERVE_TENANTS = ("t1", "t2", "t3", "t4")
SEEDS = (1, 2)
GENERATOR = "ServeReplica:cns:Generator"
INGRESS = "ServeReplica:cns:Ingress"


def _metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def _serve_process(sim, tmp_path, store_uri: str):
    """`cns serve --address` on the cluster, 2 GPU replicas; returns (process, url, keys)."""
    import json
    import os

    import socket

    from cns_ray.serve.auth import hash_key

    def free_port() -> int:  # not `from conftest import`: in a full run that name may be another package's conftest
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    keys = {t: f"key-{t}-{os.urandom(4).hex()}" for t in (*SERVE_TENANTS, "admin")}
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({hash_key(k): t for t, k in keys.items() if t != "admin"}))
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--address", sim.address, "--port", str(port), "--replicas", "2", "--gpu", "--batch-mode", "swap", "--store", store_uri,
         "--base-model", "tiny-random", "--keys-file", str(keys_file), "--admin-key-sha256", hash_key(keys["admin"]),
         "--torch-threads", "1", "--refresh-ttl", "60", "--max-in-flight-per-tenant", "8", "--drain-timeout", "30"],
        env=sim.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump():
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "endpoint ready" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(400):
        proc.kill()
        raise AssertionError("cns serve did not get ready in 400 s:\n" + "".join(lines[-60:]))
    return proc, f"http://127.0.0.1:{port}", keys, lines


def test_serve_on_two_gpu_nodes_routes_tenants_to_their_replica_and_survives_a_lost_node(sim_cluster, tiny_random, tmp_path):
    """`cns serve --address --gpu --replicas 2`: one replica on each of two GPU nodes. Swap mode with multiplexed
    routing: after warm-up a tenant's requests reach the replica holding its state (>= 90% cache hits, from
    /metrics). Then a replica's node is removed under 4 clients' load: < 5% of requests fail, Serve starts a
    replacement on the spare GPU node, every answer is its own tenant's image (bytes equal to those served alone)."""
    import base64
    import signal

    import httpx

    from cns_ray.config import StoreConfig
    from cns_ray.store import ConceptStore
    from serve_states import random_state

    sim = sim_cluster
    sim.restore()
    store_uri = sim.store_uri + "-serve"
    store = ConceptStore(StoreConfig(uri=store_uri))
    for i, t in enumerate(SERVE_TENANTS):
        store.commit(t, random_state(tiny_random, t, seed=30 + i, tokens=(f"<{t}>",)), parent=None)
    proc, url, keys, lines = _serve_process(sim, tmp_path, store_uri)
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    try:
        gens = sim.actors(GENERATOR, "ALIVE")
        assert len(gens) == 2 and len({a.node_id for a in gens}) == 2, gens
        assert {a.node_id for a in gens} <= sim.gpu_node_ids() and all(_gpus(a.required_resources) == 1 for a in gens)
        exposed = listeners_beyond_loopback()  # Serve's proxies on every node and the replicas' gRPC included
        assert not exposed, f"listening beyond loopback: {exposed}"

        def gen(client, tenant, seed):
            body = {"prompt": f"a photo of <{tenant}> dog", "seed": seed, "steps": 2}
            return client.post(f"{url}/v1/images/generations", json=body, headers={"Authorization": f"Bearer {keys[tenant]}"})

        def image(r) -> bytes:
            assert r.status_code == 200, r.text[:500]
            return base64.b64decode(r.json()["data"][0]["b64_json"])

        combos = [(t, s) for t in SERVE_TENANTS for s in SEEDS]
        with httpx.Client(timeout=120) as c:
            ref = {(t, s): image(gen(c, t, s)) for t, s in combos}  # warm-up: each tenant loaded on a replica
            assert len(set(ref.values())) == len(combos)  # every tenant (and seed) has its own image
            m0 = c.get(f"{url}/metrics", headers=admin).text
            for t, s in combos * 3:
                assert image(gen(c, t, s)) == ref[(t, s)]
            m1 = c.get(f"{url}/metrics", headers=admin).text
        hits = _metric(m1, "cns_generator_cache_hits_total") - _metric(m0, "cns_generator_cache_hits_total")
        misses = _metric(m1, "cns_generator_cache_misses_total") - _metric(m0, "cns_generator_cache_misses_total")
        assert hits + misses == 3 * len(combos) and hits / (hits + misses) >= 0.9, (hits, misses)

        # a replica's node lost under bounded load (4 clients); the replica not beside the ingress, so that this
        # is the loss of a generator (the ingress's own node loss is Serve's proxy failover, not tested here)
        (ingress,) = sim.actors(INGRESS, "ALIVE")
        victim = next((a for a in gens if a.node_id != ingress.node_id), gens[0])
        results: list[tuple[float, str, int | None, bool]] = []  # (t, tenant, status, right image)
        stop = threading.Event()

        def client_loop(k: int) -> None:
            with httpx.Client(timeout=60) as c:
                i = k
                while not stop.is_set():
                    t, s = combos[i % len(combos)]
                    i += 4
                    try:
                        r = gen(c, t, s)
                        ok = r.status_code == 200
                        right = ok and r.json()["tenant"] == t and base64.b64decode(r.json()["data"][0]["b64_json"]) == ref[(t, s)]
                        results.append((time.monotonic(), t, r.status_code, right))
                    except httpx.HTTPError:  # the connection died with the node's proxy
                        results.append((time.monotonic(), t, None, False))

        threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(4)]
        for th in threads:
            th.start()
        try:
            deadline = time.monotonic() + 300
            while len(results) < 30:
                assert time.monotonic() < deadline, "no load reached the endpoint"
                time.sleep(0.2)
            sim.remove(victim.node_id)
            removed_at = time.monotonic()
            while True:  # recovered: two replicas again, on two live GPU nodes, and 30 more answers since
                assert time.monotonic() < deadline, f"not recovered in 300 s: {sim.actors(GENERATOR, 'ALIVE')}"
                alive = sim.actors(GENERATOR, "ALIVE")
                if len({a.node_id for a in alive} & sim.gpu_node_ids()) == 2:
                    break
                time.sleep(1)
            recovered_at = time.monotonic()
            n = len(results)
            while len(results) < max(n + 30, 160):
                assert time.monotonic() < deadline, f"only {len(results)} answers"
                time.sleep(0.2)
        finally:
            stop.set()
            for th in threads:
                th.join(timeout=120)
        failed = [r for r in results if r[2] != 200]
        wrong = [r for r in results if r[2] == 200 and not r[3]]
        assert not wrong, f"{len(wrong)} answers with another tenant's image or the wrong one: {wrong[:5]}"
        assert len(failed) < 0.05 * len(results), (len(failed), len(results), failed[:10])
        assert all(r[2] == 200 for r in results if r[0] > recovered_at + 5), "failures after the endpoint recovered"
        replacement = {a.node_id for a in sim.actors(GENERATOR, "ALIVE")} - {a.node_id for a in gens}
        assert replacement and victim.node_id not in replacement
        print(f"serve node loss: {len(results)} requests, {len(failed)} failed, recovered in "
              f"{recovered_at - removed_at:.1f} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        sim.restore()
