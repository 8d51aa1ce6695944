"""Every Hugging Face architecture the four Auto heads build, tiny and random, explained.

Each ``(model_type, head)`` of ``tests/helpers/zoo.py`` must either pass every check —
``attnlrp()`` explains it with ``verify=True`` (the output is the plain forward's), the maps
are finite, and ``cp_lrp(epsilon=0)`` conserves on its bias-free copy — or do exactly what
the zoo's tables say: raise the named relprop error listed in ``EXPECTED_REFUSALS``, or miss
conservation as listed in ``NON_CONSERVING``. A model that starts failing, or starts working,
fails the test, so the tables follow the engine. A raw exception fails, unless it is a bug
already reported and listed in ``KNOWN_BROKEN`` (a strict xfail: the fix makes it XPASS and
fail, "remove from KNOWN_BROKEN").
``scripts/zoo_report.py`` writes the same checks up as ``bench/ZOO.md``.
"""

from __future__ import annotations

import warnings

import pytest

from tests.helpers import zoo

pytest.importorskip("transformers")

_ARCHS = zoo.architectures()


def _param(arch: zoo.Arch) -> object:
    marks: list[object] = []
    if arch.id in zoo.SLOW or arch.model_type in zoo.SLOW:
        marks.append(pytest.mark.slow)
    if arch.id in zoo.KNOWN_BROKEN:
        marks.append(pytest.mark.xfail(strict=True, reason=zoo.KNOWN_BROKEN[arch.id]))
    return pytest.param(arch, id=arch.id, marks=marks)


@pytest.mark.parametrize("arch", [_param(a) for a in _ARCHS])
def test_architecture(arch: zoo.Arch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = zoo.check(arch)
    if result.status == "skipped":
        pytest.skip(result.message)
    assert result.status != "build", f"{arch.id} no longer builds: {result.message}"
    assert result.status != "raw", (
        f"{arch.id}: raw {result.error} (not a relprop error): {result.message}\n{result.trace}")
    assert result.status != "wrong", f"{arch.id}: {result.error} {result.message}"
    expected = zoo.EXPECTED_REFUSALS.get(arch.id)
    if result.status == "refused":
        assert expected is not None, (
            f"{arch.id} is refused ({result.error}: {result.message[:400]}); if that is right, "
            "add it to EXPECTED_REFUSALS with its cause")
        fragment, _cause = expected
        assert fragment in result.message, (
            f"{arch.id} is refused for another reason than listed ({fragment!r}): "
            f"{result.message[:400]}")
        return
    assert expected is None, (
        f"{arch.id} is now supported: remove from EXPECTED_REFUSALS ({expected[1]})")
    assert result.output_diff == 0.0 or result.output_diff < 1e-10, result.output_diff
    assert result.finite
    if arch.id in zoo.NON_CONSERVING:
        assert not result.conserves, (
            f"{arch.id} now conserves (gap {result.gap:.1e}): remove from NON_CONSERVING")
    else:
        assert result.conserves, (
            f"{arch.id}: CP-LRP (ε = 0) on the bias-free copy does not conserve: relative gap "
            f"{result.gap:.2e} > {result.tolerance:g}")


def test_the_tables_name_only_architectures_of_the_zoo() -> None:
    ids = {a.id for a in _ARCHS}
    types = {a.model_type for a in _ARCHS}
    for table in (zoo.EXPECTED_REFUSALS, zoo.NON_CONSERVING, zoo.KNOWN_BROKEN, zoo.SLOW,
                  zoo.FLOAT32_INSIDE):
        assert set(table) <= ids, set(table) - ids
    assert set(zoo.SKIPPED) <= ids | types, set(zoo.SKIPPED) - ids - types
    assert not set(zoo.EXPECTED_REFUSALS) & set(zoo.NON_CONSERVING)
