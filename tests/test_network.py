"""Bounded Hub calls and no token in any output, against local endpoints on the loopback interface only.

A "stalled" endpoint accepts connections and never answers (what made `push_to_hub` wait forever); an "echo" endpoint
answers 500 with the request headers in its body (what put `HF_TOKEN` into the error line). Nothing leaves the
machine: the endpoints listen on 127.0.0.1 and every call is bounded by `HF_UNLEARN_HUB_TIMEOUT`.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hf_unlearn.network import scrub

TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123"  # token-shaped, never a real one
ROOT = Path(__file__).resolve().parents[1]


class _Stalled:
    """Accepts connections on 127.0.0.1 and holds them open without answering."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.held, self.stop = [], False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except OSError:
                continue

    def close(self):
        self.stop = True
        self.thread.join()
        for conn in self.held:
            conn.close()
        self.sock.close()


class _Echo(BaseHTTPRequestHandler):
    def _answer(self):
        body = ("echo: " + " | ".join(f"{k}: {v}" for k, v in self.headers.items())).encode()
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_PUT = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def stalled():
    server = _Stalled()
    yield server
    server.close()


@pytest.fixture
def echo():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_scrub_removes_token_shapes_and_the_env_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "plain-secret-value")
    text = scrub(f"Authorization: Bearer {TOKEN}; other plain-secret-value; hf_short ok")
    assert TOKEN not in text and "plain-secret-value" not in text and "hf_short ok" in text


def _online(monkeypatch, endpoint):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)


def test_upload_to_an_echoing_endpoint_fails_without_the_token(echo, tmp_path, monkeypatch, caplog):
    from hf_unlearn.hub import upload_to_hub

    _online(monkeypatch, echo)
    monkeypatch.setenv("HF_UNLEARN_HUB_RETRIES", "0")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(RuntimeError) as info:
        upload_to_hub(tmp_path, "someone/model", token=TOKEN)
    message = str(info.value)
    assert "someone/model" in message and str(tmp_path) in message
    assert TOKEN not in message and TOKEN not in caplog.text
    assert (tmp_path / "model.safetensors").read_bytes() == b"x"


def test_upload_to_a_stalled_endpoint_fails_within_the_configured_bound(stalled, tmp_path, monkeypatch):
    from hf_unlearn.hub import upload_to_hub

    _online(monkeypatch, stalled.url)
    monkeypatch.setenv("HF_UNLEARN_HUB_TIMEOUT", "0.5")
    monkeypatch.setenv("HF_UNLEARN_HUB_RETRIES", "1")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="Could not push") as info:
        upload_to_hub(tmp_path, "someone/model")
    # 2 tries x 0.5 s + 1 s backoff, plus huggingface_hub's own first-use probe (GET /api/agent-harnesses, 3 s limit)
    assert time.monotonic() - start < 9
    assert len(stalled.held) >= 2 and TOKEN not in str(info.value)
    assert (tmp_path / "model.safetensors").read_bytes() == b"x"


def test_hub_model_on_a_stalled_endpoint_fails_fast_with_the_offline_hint(stalled, monkeypatch):
    from hf_unlearn import Unlearner

    _online(monkeypatch, stalled.url)
    monkeypatch.setenv("HF_UNLEARN_HUB_TIMEOUT", "0.5")
    monkeypatch.setenv("HF_UNLEARN_HUB_RETRIES", "1")
    start = time.monotonic()
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1") as info:
        Unlearner.from_pretrained("someone/some-model")
    elapsed = time.monotonic() - start
    assert elapsed < 6, elapsed  # two tries of 0.5 s and a 1 s backoff, not minutes
    assert "`model_or_path` someone/some-model" in str(info.value) and TOKEN not in str(info.value)


@pytest.mark.slow  # a subprocess CLI run (imports, a one-cycle run, the bounded push): ~15 s on two shared cores
def test_cli_push_to_a_stalled_endpoint_fails_in_time_and_keeps_the_result(stalled, untrained_resnet_dir, tmp_path):
    out = tmp_path / "out"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        HF_ENDPOINT=stalled.url,
        HF_HUB_OFFLINE="0",
        HF_TOKEN=TOKEN,
        HF_UNLEARN_HUB_TIMEOUT="1",
        HF_UNLEARN_HUB_RETRIES="1",
        OMP_NUM_THREADS="1",
    )
    argv = ["unlearn", "--model", str(untrained_resnet_dir), "--forget_classes", "3", "--max_steps", "1"]
    argv += ["--saliency_max_batches", "1", "--do_eval", "false", "--output_dir", str(out), "--push_to_hub"]
    argv += ["--hub_model_id", "someone/model"]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "hf_unlearn.cli", *argv], env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Could not push" in proc.stderr and str(out) in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert (out / "model.safetensors").is_file() and (out / "unlearning_record.json").is_file()
    for path in out.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
    # 2 tries x 1 s + 1 s backoff for the push; the rest is the import and the one-cycle run.
    assert elapsed < 60, elapsed
    assert len(stalled.held) >= 2  # it did try the endpoint, twice (one retry)
