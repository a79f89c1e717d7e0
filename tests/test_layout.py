"""The package's layout: layers by role, imports only downward, no cycle.

`LAYERS` is the one place the order is written. A module may import its own
layer and the layers below it; nothing imports upward, nothing imports the
package inside a function (a lazy import would hide an upward one or a
cycle), and the modules' import graph has no cycle. Imports under
`if TYPE_CHECKING:` are annotations only and are not followed.
"""

import ast
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PACKAGE = "deeplabv3_tf"
# Bottom to top: each layer imports only those before it (and itself).
LAYERS = (
    "core",        # files, progress, precision, console, HTML: no package imports
    "data",        # dataset descriptors (dataset.py, a leaf), records, pipelines, builders
    "model",       # config, blocks, backbones (registry), heads, folding, weights, cost
    "ops",         # losses and metrics on labels and logits
    "pages",       # the records page, the evaluation page, the browser that checks pages
    "tasks",       # one Task per kind of task (segmentation, classification)
    "configs",     # the experiment schema, the recipes
    "runs",        # the run directory (runs.py)
    "evaluation",  # inference (multi-scale, windows), evaluation, reports
    "training",    # strategy, optimizer, train step, trainer
    "serving",     # the SavedModel, prediction, LiteRT
    "apps",        # the main job, the model demo, weight imports, CLI helpers
)
# Modules that import nothing of the package.
LEAVES = ("deeplabv3_tf.data.dataset",)


def _modules() -> dict[str, str]:
    """Module name -> file, for every module of the package."""
    found = {}
    base = os.path.join(ROOT, PACKAGE)
    for directory, _, files in os.walk(base):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The package module an imported name lives in (a module, or its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> tuple[set[str], list[str]]:
    """(package modules `module` imports at run time, descriptions of imports
    inside functions)."""
    tree = ast.parse(open(MODULES[module]).read())
    is_package = MODULES[module].endswith("__init__.py")
    targets, lazy = set(), []

    def names(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        # `from package import module` depends on that module; `from package
        # import name` on the package's __init__.
        return [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                for a in node.names]

    def visit(node, function: str | None):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, function)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in names(node):
                if name.split(".")[0] == PACKAGE and (target := _resolve(name)) not in (None, module):
                    targets.add(target)
                    if function:
                        lazy.append(f"{module}.{function} imports {name}")
        for child in ast.iter_child_nodes(node):
            inside = function
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside = node.name
            visit(child, inside)

    visit(tree, None)
    return targets, lazy


GRAPH = {module: _imports(module) for module in MODULES}


def layer(module: str) -> int | None:
    """Index of a module's layer in LAYERS (None: the package's own __init__)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def test_every_module_is_in_a_layer():
    strays = sorted(m for m in MODULES if layer(m) == -1)
    assert not strays, f"modules outside the layers {LAYERS}: {strays}; add a layer or move them"


def test_imports_only_run_downward():
    upward = []
    for module, (targets, _) in GRAPH.items():
        for target in targets:
            if layer(module) is None:  # the package's __init__ sits above nothing
                upward.append(f"{module} (the package's __init__) imports {target}")
            elif layer(target) is not None and layer(target) > layer(module):
                upward.append(f"{module} ({LAYERS[layer(module)]}) imports {target} "
                              f"({LAYERS[layer(target)]})")
    assert not upward, "\n".join(upward)


def test_no_import_inside_a_function():
    lazy = [entry for _, found in GRAPH.values() for entry in found]
    assert not lazy, "\n".join(lazy)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v][0]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(MODULES)))
    for module in sorted(MODULES):
        if module not in index:
            connect(module)
    return found


def test_no_import_cycle():
    assert not _cycles()


def test_the_checks_fail_on_an_upward_import_and_a_cycle():
    saved = {m: GRAPH[m] for m in ("deeplabv3_tf.data.dataset", "deeplabv3_tf.core.files")}
    try:
        GRAPH["deeplabv3_tf.data.dataset"] = ({"deeplabv3_tf.runs"}, [])
        with pytest.raises(AssertionError, match="data.dataset .data. imports deeplabv3_tf.runs"):
            test_imports_only_run_downward()
        GRAPH["deeplabv3_tf.core.files"] = ({"deeplabv3_tf.data.dataset"}, [])
        GRAPH["deeplabv3_tf.data.dataset"] = ({"deeplabv3_tf.core.files"}, [])
        assert ["deeplabv3_tf.core.files", "deeplabv3_tf.data.dataset"] in _cycles()
    finally:
        GRAPH.update(saved)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_of_the_package(leaf):
    assert not GRAPH[leaf][0]


def test_reading_records_and_training_load_no_builder():
    # The builders' dependencies (pycocotools for COCO) are theirs alone. (scipy,
    # SBD's reader, TensorFlow loads itself.)
    code = ("import sys, deeplabv3_tf.training.trainer, deeplabv3_tf.serving.export, "
            "deeplabv3_tf.evaluation.evaluate; "
            "print(sorted(m for m in sys.modules if m.startswith("
            "('pycocotools', 'deeplabv3_tf.data.tfrecord_builders.'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
