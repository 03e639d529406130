"""The project's import graph: no circle in any package, and each of the service's processes loads
only its own transport (CONTRIBUTING.md, "Layout")."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {  # top-level package -> the folder that holds it
    "mnist_artifact": ROOT / "artifact" / "src",
    "mnist_trainer": ROOT / "trainer" / "src",
    "mnist_service": ROOT / "service" / "src",
    "bench": ROOT,
}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> its file, for every module of the project's packages."""
    modules = {}
    for package, parent in PACKAGES.items():
        for path in sorted((parent / package).rglob("*.py")):
            parts = path.relative_to(parent).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(tree: ast.Module):
    """Every import statement of a module, lazy ones in functions included (a circle through a lazy
    import is still a circle), but not those under `if TYPE_CHECKING:`, which never run."""
    pending = list(ast.iter_child_nodes(tree))
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending += node.orelse
        else:
            pending += ast.iter_child_nodes(node)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join([*base, node.module] if node.module else base)
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names]
            edges |= {target for target in targets if target in modules and target != name}
        graph[name] = edges
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once all it reaches is explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def test_no_module_of_the_project_takes_part_in_an_import_circle():
    modules = project_modules()
    assert {"mnist_service.grpc.server", "mnist_artifact.repository.s3"} <= set(modules)
    circle = find_circle(import_graph(modules))
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_circle_finder_finds_a_circle_through_a_relative_import(tmp_path, monkeypatch):
    """The check above can fail: a package whose module b imports a (`from . import a`, here lazily)
    while a imports b (`from .b import x`) is a circle; an import for type checkers only is not."""
    package = tmp_path / "mnist_service"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import x\n")
    (package / "b.py").write_text("import json\nx = 1\n\ndef f():\n    from . import a\n")
    (package / "typing_only.py").write_text("import typing\nif TYPE_CHECKING:\n    from . import a\n")
    monkeypatch.setitem(PACKAGES, "mnist_service", tmp_path)
    for other in ("mnist_artifact", "mnist_trainer", "bench"):
        monkeypatch.delitem(PACKAGES, other)
    graph = import_graph(project_modules())
    assert graph["mnist_service.typing_only"] == set()
    assert find_circle(graph) == ["mnist_service.a", "mnist_service.b", "mnist_service.a"]


def loaded_modules(*imported: str) -> set[str]:
    """The modules a fresh interpreter holds after importing `imported`."""
    code = f"import json, sys\nimport {', '.join(imported)}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(result.stdout))


def _of(modules: set[str], *roots: str) -> list[str]:
    return sorted(m for m in modules if any(m == root or m.startswith(root + ".") for root in roots))


WSGI = ("flask", "werkzeug", "gunicorn", "gevent", "mnist_service.http", "mnist_service.process")


def test_the_grpc_process_imports_no_flask_and_no_wsgi_module():
    loaded = loaded_modules("mnist_service.grpc.server")
    assert "grpc" in loaded and "mnist_service.dataplane.store" in loaded  # the import really happened
    assert _of(loaded, *WSGI) == []


@pytest.mark.parametrize("entry", ["mnist_service.process.cli", "mnist_service.process.gunicorn_config",
                                   "mnist_service.http.app", "mnist_service.process.worker"])
def test_the_http_side_imports_no_grpc_module(entry):
    loaded = loaded_modules(entry)
    assert entry in loaded
    assert _of(loaded, "grpc", "mnist_service.grpc") == []
