"""`make lab` works on a fresh machine, also as root (containers, cloud machines, CI), where
JupyterLab refuses to start without ``--allow-root``: the target starts a server that serves a
chapter notebook, and the server has jupyterlab-myst, which renders the chapters' MyST markup
({cite:p}, {doc}, directives) in Lab as the website does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"

pytest.importorskip("jupyterlab", reason="make lab installs JupyterLab (the notebooks extra)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.skipif(not (VENV / "bin" / "jupyter").exists(), reason="make lab runs the .venv's jupyter")
def test_make_lab_serves_a_chapter(tmp_path):
    port, token = _free_port(), "diffusion-edu-test"
    args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} "
            f"--ServerApp.port_retries=0 --IdentityProvider.token={token}")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_PLATFORM_DIRS": "1"}
    log = open(tmp_path / "lab.log", "w+")
    proc = subprocess.Popen(["make", "-C", str(ROOT), "lab", f"LAB_ARGS={args}"], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = _get(f"{base}/api/contents/notebooks/01_why_diffusion.ipynb?token={token}")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        log.seek(0)
        output = log.read()
        assert status == 200, f"make lab did not serve the chapter (exit {proc.poll()}):\n{output[-3000:]}"
        model = json.loads(body)
        assert model["type"] == "notebook" and model["content"]["cells"], "the chapter has no cells"
        assert model["content"]["cells"][0]["source"].startswith("# 1.")
        # the Lab page itself, and the MyST renderer among its extensions
        assert _get(f"{base}/lab?token={token}")[0] == 200
        _, ext = _get(f"{base}/lab/api/extensions?token={token}")
        names = {e["name"] for e in json.loads(ext)}
        assert "jupyterlab-myst" in names, sorted(names)
        # make echoes the command it ran: --allow-root exactly when running as root
        assert ("--allow-root" in output) == (os.geteuid() == 0), output[:500]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
