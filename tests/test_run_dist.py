"""The GPU branch of the distributed runner, on CPU: with CUDA present each torchrun rank
joins an NCCL group on its own device (``LOCAL_RANK``), and explains on that device. CI has
no GPU; the calls into CUDA and the process group are recorded instead of made."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from relprop.run import dist as rundist
from relprop.run import loop
from relprop.run.config import RunConfig
from relprop.run.dist import Ranks


def _torchrun(monkeypatch: pytest.MonkeyPatch, rank: int, world: int, local: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls: dict[str, Any] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("device", d))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **_: calls.setdefault("backend", backend))
    return calls


def test_each_rank_joins_nccl_on_its_own_gpu(monkeypatch: pytest.MonkeyPatch,
                                              recorded: dict[str, Any]) -> None:
    _torchrun(monkeypatch, rank=5, world=8, local=1)
    where = rundist.ranks()
    assert recorded == {"device": 1, "backend": "nccl"}
    assert (where.rank, where.world, where.local_rank, where.initialised_here) == (5, 8, 1, True)


def test_a_cpu_run_on_a_gpu_machine_uses_gloo(monkeypatch: pytest.MonkeyPatch,
                                              recorded: dict[str, Any]) -> None:
    _torchrun(monkeypatch, rank=0, world=2, local=0)
    rundist.ranks(device="cpu")
    assert recorded == {"backend": "gloo"}


def test_one_process_joins_no_group(monkeypatch: pytest.MonkeyPatch,
                                    recorded: dict[str, Any]) -> None:
    _torchrun(monkeypatch, rank=0, world=1, local=0)
    assert rundist.ranks() == Ranks()
    assert recorded == {}


@pytest.mark.parametrize(("asked", "local", "expected"), [
    ("cuda", 3, "cuda:3"), (None, 2, "cuda:2"), ("cpu", 1, "cpu"),
])
def test_the_model_goes_to_the_rank_s_gpu(monkeypatch: pytest.MonkeyPatch, asked: str | None,
                                          local: int, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = RunConfig(model="pkg.models:build", data="images/", out="run1/", device=asked)
    where = Ranks(rank=local, world=4, local_rank=local)
    assert str(loop._device(config, where)) == expected
