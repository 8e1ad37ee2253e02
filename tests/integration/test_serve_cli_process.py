"""``cns serve`` as a process (issue 12): a second endpoint on a used port fails clearly; SIGTERM drains the request
in flight and leaves no Ray process behind. Its own local Ray on 127.0.0.1; loops are bounded, nothing is timed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import free_port

pytestmark = pytest.mark.slow

ADMIN = "cli-admin-key"


def _env(tmp_path) -> dict:
    env = {**os.environ, "CNS_ADMIN_KEY": ADMIN, "RAY_ADDRESS": "", "CNS_STORE": str(tmp_path / "store")}
    env.pop("RAY_ADDRESS")
    return env


def test_a_used_port_fails_clearly_before_starting_anything(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "cns_ray.cli", "serve", "--port", str(port)], env=_env(tmp_path),
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"port {port} on 127.0.0.1 is already in use" in p.stderr and "--port" in p.stderr


def test_serve_help_says_how_to_set_the_admin_key():
    p = subprocess.run([sys.executable, "-m", "cns_ray.cli", "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "CNS_ADMIN_KEY" in p.stdout and "--admin-key-sha256" in p.stdout


def test_sigterm_drains_in_flight_requests_and_leaves_no_ray_processes(tmp_path):
    import httpx
    import psutil

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cns_ray.cli", "serve", "--port", str(port), "--num-cpus", "0.5"],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump():
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "endpoint ready" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(300), "".join(lines[-50:])
        me = psutil.Process(proc.pid)
        ray_procs = me.children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in ray_procs if p.is_running())
        url = f"http://127.0.0.1:{port}"
        h = {"Authorization": f"Bearer {ADMIN}", "X-CNS-Tenant": "demo"}
        result: dict = {}

        def request():
            with httpx.Client(timeout=300) as c:
                result["r"] = c.post(f"{url}/v1/images/generations", json={"prompt": "a dog", "steps": 100, "seed": 1}, headers=h)

        t = threading.Thread(target=request)
        t.start()
        with httpx.Client(timeout=60) as c:
            for _ in range(600):  # bounded: until the ingress holds the request
                if 'cns_in_flight{tenant="demo"} 1' in c.get(f"{url}/metrics", headers=h).text:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"the request never reached the ingress: {result}")
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=300)
        assert not t.is_alive()
        assert result["r"].status_code == 200, result["r"].text[:500]  # drained, not cut off
        assert proc.wait(timeout=300) == 0, "".join(lines[-50:])
        _, alive = psutil.wait_procs(ray_procs, timeout=60)
        assert not alive, [" ".join(p.cmdline())[:100] for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
