"""The package's layers (docs/architecture.md): every module imports only its own layer and those below
it, counting imports inside functions too, so that no cycle hides behind a deferred import."""

from __future__ import annotations

import ast
from pathlib import Path

import boltzformer

SRC = Path(boltzformer.__file__).resolve().parent

# lowest first; a module may import its own layer and any layer before it
LAYERS = (
    ("config", "provenance", "runtime", "sizes"),
    ("io",),
    ("model",),
    ("predict",),
    ("evaluate",),
    ("data",),
    ("train",),
    ("app",),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("boltzformer", *parts))] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """The boltzformer modules that ``path`` imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {  # `if TYPE_CHECKING:` blocks: annotations only, never imported at run time
        id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body for n in ast.walk(stmt)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("boltzformer"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("boltzformer"):
                out.add(name)
                out.update(f"{name}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_is_in_a_layer():
    modules = _modules()
    unplaced = sorted(m for m in modules if m != "boltzformer" and _layer(m) not in RANK)
    assert not unplaced, f"modules outside the layers of docs/architecture.md: {unplaced}"


def test_no_module_imports_a_higher_layer():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        if module == "boltzformer":  # the public API re-exports from every layer it names
            continue
        own = RANK[_layer(module)]
        for target in _imports(path, module):
            layer = _layer(target)
            if layer in RANK and RANK[layer] > own:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {
        m: {t for t in _imports(p, m) if t in modules and t != m and not m.startswith(t + ".")}
        for m, p in modules.items()
        if m != "boltzformer"
    }
    # a package's __init__ re-exporting its own submodules is not a cycle of behaviour
    graph = {m: {t for t in ts if not (t.startswith(m + ".") and modules[m].name == "__init__.py")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_source_module_is_over_400_lines():
    data_tables: set[str] = set()  # modules that are data tables, allowed to be long (none today)
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400 and str(p.relative_to(SRC)) not in data_tables
    }
    assert not long, f"modules over 400 lines (docs/architecture.md): {long}"
