"""The shape of the package: no import cycles in kseg/, and kseg.compat's patching is always undone.

The import graph is read from the source (``ast``), not by importing anything, so the test is fast
and backend-free. Every ``import`` counts, also one inside a function: a lazy import hides a cycle
from Python but not from a reader, and it is what made ``kseg.predict`` and the old ``kseg.export``
depend on each other.
"""

import ast
import os
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "kseg"

# Import cycles known today in modules outside this test's concern, each as the sorted tuple of the
# modules of one cycle (a strongly connected component), with a comment naming the module to fix.
# Any other cycle is a failure; a fixed cycle must be removed from here (stale entries fail too).
KNOWN_CYCLES = set()


def module_files(root=os.path.join(REPO, PACKAGE)):
    """``{dotted module name: path}`` of every ``.py`` file under ``root`` (packages by their ``__init__``)."""
    base = os.path.dirname(root)
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, f), base)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = os.path.join(folder, f)
    return out


def import_graph(modules):
    """``{module: set of kseg modules it imports}``, from every import statement (also inside functions).

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``. Importing a
    submodule also runs its parent packages' ``__init__``; those implicit edges are not counted (a
    package that re-exports its submodules would otherwise always be "in a cycle" with them), so a
    submodule must not import names from its own package's ``__init__`` -- that edge IS counted.
    """
    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    source = ".".join(parts + ([node.module] if node.module else []))
                else:
                    source = node.module
                for a in node.names:
                    if f"{source}.{a.name}" in modules:
                        deps.add(f"{source}.{a.name}")
                    elif source in modules:
                        deps.add(source)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan), each a sorted tuple."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                found.append(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return set(found)


def test_import_graph_reader_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import a\n\ndef g():\n    pass\n")
    (pkg / "c.py").write_text("import pkg.sub.d\n")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.d import x  # noqa\n")
    (pkg / "sub" / "d.py").write_text("from ..c import y  # noqa\nx = 1\n")
    graph = import_graph(module_files(str(pkg)))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.sub"] == {"pkg.sub.d"} and graph["pkg.sub.d"] == {"pkg.c"}
    assert cycles(graph) == {("pkg.a", "pkg.b"), ("pkg.c", "pkg.sub.d")}


def test_no_import_cycles():
    found = cycles(import_graph(module_files()))
    new = sorted(found - KNOWN_CYCLES)
    assert not new, "import cycles in kseg/: " + "; ".join(" <-> ".join(c) for c in new)
    stale = sorted(KNOWN_CYCLES - found)
    assert not stale, f"these cycles are gone, remove them from KNOWN_CYCLES: {stale}"


def test_runtime_is_below_predict_and_export():
    graph = import_graph(module_files())
    assert not {m for m in graph["kseg.runtime"] if m.startswith(("kseg.predict", "kseg.export"))}
    assert not {m for m in graph["kseg.predict"] if m.startswith("kseg.export")}
    assert "kseg.runtime" in graph["kseg.predict"]


# ------------------------------------------------------------------ kseg.compat: scoped patching


def test_compat_patched_restores_exactly_what_was_there():
    from kseg import compat

    class Base:
        def method(self):
            return "base"

    class Child(Base):
        pass

    module = types.ModuleType("m")
    module.value = 1
    with compat.patched((module, "value", 2), (module, "new", 3), (Child, "method", lambda self: "patched")):
        assert (module.value, module.new, Child().method()) == (2, 3, "patched")
    assert module.value == 1 and not hasattr(module, "new")
    assert "method" not in vars(Child) and Child().method() == "base"  # inherited again, not copied down

    with pytest.raises(ValueError):
        with compat.patched((module, "value", 5)):
            raise ValueError
    assert module.value == 1

    # restored(): whatever a third-party function changes inside the block is undone
    with compat.restored((module, "value"), (module, "other")):
        module.value, module.other = 7, 8
    assert module.value == 1 and not hasattr(module, "other")


def test_multi_worker_log_reduction_is_scoped_to_its_block():
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from kseg.compat import multi_worker_log_reduction

    original = tf_trainer.reduce_per_replica
    with multi_worker_log_reduction():
        assert tf_trainer.reduce_per_replica is not original
    assert tf_trainer.reduce_per_replica is original


def test_nothing_heavy_runs_at_import():
    """Importing kseg, its config and its commands loads neither Keras nor TensorFlow."""
    import subprocess
    import sys

    code = ("import sys, kseg, kseg.config, kseg.cli, kseg.cli.common, kseg.cli.train; "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
