"""relprop explain as real processes: killed with SIGKILL and resumed; torchrun with 2 ranks
(gloo, CPU) and two "nodes" on localhost: the same samples and relevance as one process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import relprop.store
from relprop.run import RunConfig, explain_dataset
from tests.test_run import make_images

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / "src"), str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _explain_args(data: Path, out: Path, model: str = "tiny_cnn") -> list[str]:
    return ["explain", "--model", f"tests.helpers.run_models:{model}", "--data", str(data),
            "--out", str(out), "--batch-size", "4", "--workers", "0", "--quiet"]


def _reference(data: Path, out: Path, model: str = "tiny_cnn") -> relprop.store.Store:
    explain_dataset(RunConfig(model=f"tests.helpers.run_models:{model}", data=data, out=out,
                              batch_size=4, workers=0, quiet=True))
    return relprop.store.open(out)


def _kill_after(args: list[str], out: Path, sidecars: int, env: dict[str, str]) -> None:
    """Start ``python -m relprop ARGS`` and SIGKILL it once ``sidecars`` chunks are stored."""
    process = subprocess.Popen([sys.executable, "-m", "relprop", *args], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if len(list((out / "shards").glob("*.json"))) >= sidecars:
                break
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        if process.stderr:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    data = make_images(tmp_path / "images")
    monkeypatch.setenv("RELPROP_TEST_SLEEP", "0")
    reference = _reference(data, tmp_path / "ref", "slow_cnn")
    out = tmp_path / "out"
    slow = _env(RELPROP_TEST_SLEEP="0.3")
    _kill_after(_explain_args(data, out, "slow_cnn"), out, 2, slow)
    partial = relprop.store.open(out)  # an interrupted store reads as far as it got
    assert not partial.complete and 2 * 4 <= len(partial) < 24
    _kill_after(_explain_args(data, out, "slow_cnn") + ["--resume"], out, len(partial) // 4 + 1,
                slow)
    explain_dataset(RunConfig(model="tests.helpers.run_models:slow_cnn", data=data, out=out,
                              batch_size=4, workers=0, quiet=True, resume=True))
    store = relprop.store.open(out)
    ids = [row["id"] for row in store.index]
    assert ids == list(range(24)) and store.complete  # none missing, none twice
    assert store.paths == reference.paths
    torch.testing.assert_close(store.relevances(list(range(24))),
                               reference.relevances(list(range(24))))
    assert [r["explained"] for r in store.index] == pytest.approx(
        [r["explained"] for r in reference.index], rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_same(out: Path, reference: relprop.store.Store, world: int) -> None:
    store = relprop.store.open(out)
    assert store.complete and store.manifest["world_size"] == world
    assert [row["id"] for row in store.index] == list(range(len(reference.index)))
    assert store.paths == reference.paths
    assert len(list((out / "shards").glob("*.safetensors"))) == store.manifest["chunks"]
    torch.testing.assert_close(store.relevances(list(range(len(store)))),
                               reference.relevances(list(range(len(store)))),
                               rtol=1e-3, atol=1e-4)


def test_torchrun_two_processes(tmp_path: Path) -> None:
    data = make_images(tmp_path / "images", per_class=11)  # 33 samples: a last, short chunk
    reference = _reference(data, tmp_path / "ref")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "relprop", *_explain_args(data, out)]
    result = subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    _check_same(out, reference, 2)


def test_torchrun_two_nodes_on_localhost(tmp_path: Path) -> None:
    data = make_images(tmp_path / "images", per_class=11)
    reference = _reference(data, tmp_path / "ref")
    out = tmp_path / "out"
    port = str(_free_port())
    launchers = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
         "1", "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", port,
         "-m", "relprop", *_explain_args(data, out)],
        env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for node in (0, 1)]
    errors = [launcher.communicate(timeout=300)[1].decode() for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], errors
    _check_same(out, reference, 2)


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed at 6 random moments (start-up, reading, explaining, writing), then resumed."""
    import random

    data = make_images(tmp_path / "images")
    monkeypatch.setenv("RELPROP_TEST_SLEEP", "0")
    reference = _reference(data, tmp_path / "ref", "slow_cnn")
    out = tmp_path / "out"
    rng = random.Random(0)
    for attempt in range(6):
        args = _explain_args(data, out, "slow_cnn") + (["--resume"] if attempt else [])
        process = subprocess.Popen([sys.executable, "-m", "relprop", *args],
                                   env=_env(RELPROP_TEST_SLEEP="0.05"), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 8.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    explain_dataset(RunConfig(model="tests.helpers.run_models:slow_cnn", data=data, out=out,
                              batch_size=4, workers=0, quiet=True, resume=True))
    store = relprop.store.open(out)
    assert [row["id"] for row in store.index] == list(range(24))
    torch.testing.assert_close(store.relevances(list(range(24))),
                               reference.relevances(list(range(24))))
