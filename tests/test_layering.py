"""The package's import graph: no cycle, layers import only leftwards, no hidden imports.

Layers (a module imports only from its own layer or lower ones)::

    errors/config/config_merge/structures/device (0) <- modeling (1) <- checkpoint (2) <- data (3)
        <- inference (4) <- engine (5) <- tools (6) <- cli (7)

The graph holds every ``import`` of a ``discobox`` module, at module level and inside functions;
the cycle check also follows the package ``__init__`` files an import runs first. Exceptions:
the root ``discobox/__init__.py`` (the public API) may import any layer, and ``config`` may import
the leaf ``modeling/<part>/params.py`` dataclasses its sections are made of.
Run ``python tests/test_layering.py`` for a report (module and edge counts, cycles, violations).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "discobox"

LAYERS = {
    "errors": 0, "config": 0, "config_merge": 0, "structures": 0, "device": 0,
    "modeling": 1, "checkpoint": 2, "data": 3, "inference": 4, "engine": 5, "tools": 6,
    "cli": 7,
    "__main__": 8,  # ``python -m discobox``: the entry point, above everything
}
ROOT_LAYER = 8  # discobox/__init__.py re-exports the public API from every layer

# The one upward import allowed: the config's ``loss``, ``crf`` and ``corr`` sections are the
# parameter dataclasses of the modules they configure (``modeling/<part>/params.py``), so
# ``discobox.config`` may import such a ``params`` module if it is a leaf: it imports no
# discobox module at all (checked by :func:`params_leaf_violations`).
UPWARD_IMPORTER = "discobox.config"

# (importer, imported) pairs allowed inside a function, with the reason. None today. Lazy imports
# of optional third-party packages (onnx, tensorboard, ...) are not discobox modules: not listed.
ALLOWED_FUNCTION_LEVEL: dict[tuple[str, str], str] = {}


def _allowed_upward(src: str, dst: str) -> bool:
    return (src == UPWARD_IMPORTER and dst.startswith("discobox.modeling.")
            and dst.endswith(".params"))


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    in_function: bool


def module_names(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """``dotted name -> file`` for every module of ``root/package`` (``__init__`` -> package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(node: ast.ImportFrom, importer: str, modules: dict[str, Path]) -> str:
    """The absolute module a ``from ... import`` names before its ``import`` list."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer, modules):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, importer: str, modules: dict[str, Path], package: str) -> None:
        self.importer, self.modules, self.package = importer, modules, package
        self.depth = 0
        self.edges: list[Edge] = []

    def _add(self, target: str, line: int) -> None:
        # the longest prefix of ``target`` that is a module of the package
        parts = target.split(".")
        while parts and ".".join(parts) not in self.modules:
            parts.pop()
        if parts and parts[0] == self.package:
            self.edges.append(Edge(self.importer, ".".join(parts), line, self.depth > 0))

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(node, self.importer, self.modules)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base, node.lineno)


def import_graph(root: Path = SRC, package: str = PACKAGE) -> tuple[dict[str, Path], list[Edge]]:
    """Every module of the package and every import of a package module (self-imports out)."""
    modules = module_names(root, package)
    edges: list[Edge] = []
    for name, path in modules.items():
        c = _Collector(name, modules, package)
        c.visit(ast.parse(path.read_text(), filename=str(path)))
        edges.extend(e for e in c.edges if e.dst != name)
    return modules, edges


def _runtime_edges(edges: list[Edge], modules: dict[str, Path], package: str) -> set[tuple]:
    """Edges as Python runs them: importing ``a.b.c`` first runs the ``__init__`` of ``a.b``
    (of every package above ``c`` that is not already above the importer). The root package is
    left out: every import runs it first, and it imports only leaves of the graph."""
    out = set()
    for e in edges:
        out.add((e.src, e.dst))
        parts = e.dst.split(".")
        for k in range(2, len(parts)):
            pkg = ".".join(parts[:k])
            if not (e.src == pkg or e.src.startswith(pkg + ".")) and pkg in modules:
                out.add((e.src, pkg))
    return {(a, b) for a, b in out if b != package and a != b}


def cycles(modules: dict[str, Path], edges: list[Edge], package: str = PACKAGE) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for a, b in _runtime_edges(edges, modules, package):
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layer(module: str, package: str = PACKAGE) -> int:
    """The layer of a module; ``KeyError`` for a top-level name not in :data:`LAYERS`."""
    parts = module.split(".")
    return ROOT_LAYER if len(parts) == 1 else LAYERS[parts[1]]


def layer_violations(edges: list[Edge], package: str = PACKAGE) -> list[str]:
    out = set()
    for e in edges:
        if e.src == package or _allowed_upward(e.src, e.dst):
            continue
        if layer(e.dst, package) > layer(e.src, package):
            out.add(f"{e.src} (layer {layer(e.src, package)}) imports {e.dst} "
                       f"(layer {layer(e.dst, package)}), line {e.line}")
    return sorted(out)


def params_leaf_violations(edges: list[Edge]) -> list[str]:
    """The ``params`` modules the config imports upward that import a discobox module."""
    allowed = {e.dst for e in edges if _allowed_upward(e.src, e.dst)}
    return sorted({f"{e.src} imports {e.dst}, line {e.line}" for e in edges if e.src in allowed})


def function_level_imports(edges: list[Edge]) -> list[str]:
    return sorted({f"{e.src} imports {e.dst} inside a function, line {e.line}"
                   for e in edges
                   if e.in_function and (e.src, e.dst) not in ALLOWED_FUNCTION_LEVEL})


def unmapped_modules(modules: dict[str, Path], package: str = PACKAGE) -> list[str]:
    return sorted(m for m in modules if m != package and m.split(".")[1] not in LAYERS)


# ---- the checks on the real package ----


def test_every_module_has_a_layer():
    modules, _ = import_graph()
    assert unmapped_modules(modules) == []


def test_no_import_cycle():
    modules, edges = import_graph()
    assert cycles(modules, edges) == []


def test_layers_import_only_leftwards():
    _, edges = import_graph()
    assert layer_violations(edges) == []


def test_config_imports_only_leaf_params_modules_upward():
    _, edges = import_graph()
    assert params_leaf_violations(edges) == []


def test_no_function_level_import_of_a_package_module():
    _, edges = import_graph()
    assert function_level_imports(edges) == []


# ---- the checker itself, on a small made-up package ----


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"discobox/__init__.py": "", **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_finds_cycles_upward_and_hidden_imports(tmp_path):
    root = _fake_package(tmp_path, {
        "discobox/config.py": "from .modeling.crf.params import X\n"
                              "from .modeling.boxsup.params import Y\n",
        "discobox/modeling/__init__.py": "from .build import build\n",
        "discobox/modeling/build.py": "from ..config import C\n",
        "discobox/modeling/crf/__init__.py": "",
        "discobox/modeling/crf/params.py": "X = 1\n",
        "discobox/modeling/boxsup/params.py": "from ...structures import S\n",
        "discobox/structures.py": "S = 1\n",
        "discobox/data/loader.py": "def f():\n    from ..inference import predictor\n",
        "discobox/inference/__init__.py": "",
        "discobox/inference/predictor.py": "from ..data.loader import f\n",
    })
    modules, edges = import_graph(root)
    assert len(modules) == 11
    # config -> modeling.crf.params runs modeling/__init__, which imports build -> config
    assert ["discobox.config", "discobox.modeling", "discobox.modeling.build"] in cycles(
        modules, edges)
    assert ["discobox.data.loader", "discobox.inference.predictor"] in cycles(modules, edges)
    bad = layer_violations(edges)
    assert len(bad) == 1 and bad[0].startswith("discobox.data.loader (layer 3) imports "
                                               "discobox.inference.predictor (layer 4)")
    assert params_leaf_violations(edges) == [
        "discobox.modeling.boxsup.params imports discobox.structures, line 1"]
    hidden = function_level_imports(edges)
    assert hidden == ["discobox.data.loader imports discobox.inference.predictor inside a "
                      "function, line 2"]


def _report() -> int:
    modules, edges = import_graph()
    found = cycles(modules, edges)
    upward = layer_violations(edges)
    upward += [f"non-leaf params module: {v}" for v in params_leaf_violations(edges)]
    hidden = function_level_imports(edges)
    unmapped = unmapped_modules(modules)
    print(f"modules: {len(modules)}  edges: {len({(e.src, e.dst) for e in edges})}  "
          f"cycles: {len(found)}  layer violations: {len(upward)}  "
          f"function-level imports: {len(hidden)}  unmapped: {len(unmapped)}")
    for title, items in (("cycle", [" -> ".join(c) for c in found]), ("upward", upward),
                         ("function-level", hidden), ("unmapped", unmapped)):
        for item in items:
            print(f"  {title}: {item}")
    return int(bool(found or upward or hidden or unmapped))


if __name__ == "__main__":
    sys.exit(_report())
