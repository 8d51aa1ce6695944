"""The layout the package promises: no import cycle, the engine as a pipeline whose session
knows no op family, an engine that never names a rule class, and public modules that import
no private names of other modules except the engine's entry point."""

from __future__ import annotations

import ast
from pathlib import Path

import relprop

SOURCE = Path(relprop.__file__).resolve().parent.parent


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in (SOURCE / "relprop").rglob("*.py"):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, str]]:
    """``(module, imported name)`` for every ``from … import …`` of a module, including those
    under ``if TYPE_CHECKING``; ``name`` is ``""`` for a plain ``import module``."""
    path, package = MODULES[name]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                out.append((submodule, "") if submodule in MODULES else (module, alias.name))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, "") for alias in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in _imports(name) if m in MODULES and m != name}
            for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (``[a, b, …, a]``), or ``None``."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, [*trail, nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return None


def test_no_import_cycle_type_checking_included() -> None:
    assert find_cycle(_graph()) is None


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = _graph()
    graph["relprop._engine.session"] = graph["relprop._engine.session"] | {
        "relprop._engine.intercept"}  # intercept imports session: now a loop
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert {"relprop._engine.session", "relprop._engine.intercept"} <= set(cycle)


def test_the_engine_is_a_pipeline_package() -> None:
    steps = {"checks", "eager", "session", "records", "saved", "intercept", "inplace",
             "graph", "apply", "handlers", "handlers.layers", "handlers.transformer",
             "handlers.recurrent"}
    assert {f"relprop._engine.{s}" for s in steps} <= MODULES.keys()
    flat = [n for n in MODULES if n.startswith("relprop._") and not n.startswith("relprop._engine")
            and n != "relprop.__main__"]  # `python -m relprop`, not engine
    assert flat == [], f"engine modules outside relprop._engine: {flat}"


def test_the_session_knows_no_op_family() -> None:
    for module in ("relprop._engine.session", "relprop._engine.records",
                   "relprop._engine.saved", "relprop._engine.graph"):
        imported = {m for m, _ in _imports(module)}
        assert not any(m.startswith("relprop._engine.handlers") for m in imported), module


def test_the_engine_never_names_a_rule_class() -> None:
    rule_classes = {n for n in relprop.rules.__all__
                    if isinstance(getattr(relprop.rules, n), type)
                    and issubclass(getattr(relprop.rules, n), relprop.rules.Rule)}
    rule_classes -= {"Rule", "LayerRule"}  # the contract itself, for type hints
    for name in MODULES:
        if not name.startswith("relprop._engine"):
            continue
        tree = ast.parse(MODULES[name][0].read_text(encoding="utf-8"))
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 for a in n.names}
        named = sorted(used & rule_classes)
        assert named == [], f"{name} names rule classes {named}"


def test_public_modules_import_no_private_names_of_other_modules() -> None:
    for name in MODULES:
        if any(part.startswith("_") and part != "__init__" for part in name.split(".")):
            continue  # private modules may
        package = name if MODULES[name][1] else name.rsplit(".", 1)[0]
        for module, imported in _imports(name):
            if not module.startswith("relprop"):
                continue
            if module == "relprop._engine" or module.startswith(package + "."):
                continue  # the engine's entry point; a private module of its own package
            private_module = any(p.startswith("_") for p in module.split(".")[1:])
            assert not private_module, f"{name} imports the private module {module}"
            assert not imported.startswith("_"), f"{name} imports {module}.{imported}"
