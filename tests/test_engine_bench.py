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
