"""The engine benchmark's relprop rows run the composites their names say."""

from __future__ import annotations

import pytest

from relprop import composites
from relprop_bench.engine_methods import _composite


@pytest.mark.parametrize(("method", "tokens", "expected"), [
    ("relprop epsilon_plus_flat", False, composites.epsilon_plus_flat().name),
    ("relprop default", False, composites.default().name),
    ("relprop default", True, composites.default(tokens=True).name),
    ("relprop attnlrp", True, composites.attnlrp().name),
])
def test_each_row_runs_the_composite_it_names(method: str, tokens: bool, expected: str) -> None:
    assert _composite(method, tokens, tokens).name == expected


def test_an_unknown_row_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown relprop method"):
        _composite("relprop epsilon_alpha9", False)


def test_interleaved_verdicts_name_the_floor_that_prevents_a_goal() -> None:
    """``bench/interleaved.py`` says of each measured ratio whether it meets its goal, sits
    at a FLOP floor above the goal, or is held above the goal by the interception floor."""
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    sys.path.insert(0, bench)
    try:
        from interleaved import verdicts
    finally:
        sys.path.remove(bench)
    times = {"gradient": 0.100, "relprop epsilon": 0.130, "floor epsilon": 0.115,
             "relprop epsilon_plus_flat": 0.140, "relprop epsilon_gamma_box": 0.260,
             "relprop K targets": 0.5, "relprop K calls": 1.0}
    got = {method: verdict for method, _, verdict in verdicts("efficientnet_b0", times)}
    assert got["relprop epsilon"].startswith("the interception floor is 1.15x")
    assert "+15.0 ms" in got["relprop epsilon"]
    assert got["relprop epsilon_plus_flat"].startswith("met")
    assert got["relprop epsilon_gamma_box"].startswith("+4 % from its FLOP floor 2.5x")
    assert got["K targets / K calls"].startswith("met")
    times["floor epsilon"] = 0.101  # the floor meets the goal: relprop does not
    assert verdicts("resnet50", times)[0][2].startswith("not met")
