"""The package's modules import each other without a cycle, imports inside functions included: a
lazy import that only breaks a cycle hides a boundary drawn in the wrong place."""
import ast
import os

import npmobilenet

ROOT = os.path.dirname(npmobilenet.__file__)


def _modules():
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = "npmobilenet." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def _imports(module, path, modules):
    """The package modules `module` imports anywhere in its source, as Python runs them:
    `from a.b import c` imports the module a.b.c if there is one, else the package a.b, whose
    __init__ runs its own imports (so a package's __init__ keeps its edges to its submodules)."""
    package = path.endswith("__init__.py")
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + (1 if package else 0)]
                base = ".".join(parts + ([base] if base else []))
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            names = submodules + ([base] if len(submodules) < len(node.names) else [])
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_consumers_do_not_import_the_layer_tree():
    # fused inference, int8, ONNX export and the summary read the lowered graph, not block classes
    modules = _modules()
    for module in modules:
        if module.startswith(("npmobilenet.inference", "npmobilenet.io.onnx", "npmobilenet.analysis",
                              "npmobilenet.compression.q", "npmobilenet.graph")):
            imported = _imports(module, modules[module], modules)
            assert not {m for m in imported if m.startswith(("npmobilenet.layers", "npmobilenet.models"))}, module
