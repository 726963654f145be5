"""The package's structure, checked as code so that it stays true.

Imports point down: public modules -> _dispatch -> backends (reference, cpu, cuda) ->
_plans -> _checks -> _device (and _cache, where it exists), with no cycles, no backend importing a public module or
another backend, and no public module reaching for a backend's private name. Every
import statement counts, also those inside functions (lazy imports are still edges).
"""

import ast
import importlib
import inspect
import pathlib

import pytest

from fastgauss import _dispatch

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fastgauss"

# Lowest first. A module may import modules of its own layer or below, never above.
LAYERS = ("base", "checks", "plans", "backend", "dispatch", "public", "interop")
BACKENDS = ("fastgauss.reference.", "fastgauss.cpu", "fastgauss.cuda")
PUBLIC = {
    "fastgauss",
    "fastgauss.diffusion",
    "fastgauss.kl",
    "fastgauss.mvn",
    "fastgauss.objective",
    "fastgauss.random",
    "fastgauss.schedules",
    "fastgauss.reference",
    "fastgauss.vjp",
}
TOOLS = {"fastgauss.__main__", "fastgauss._examples", "fastgauss._bench", "fastgauss._selfcheck"}  # the main job: above the public API


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module):
    """The layer of a module; a module in none fails the tests until it is placed here."""
    if module == "fastgauss._device" or module.startswith("fastgauss._device.") or module == "fastgauss._cache":
        return "base"  # scalar math both targets compile; the Numba cache locator
    if module in ("fastgauss._checks", "fastgauss.schedules"):  # validation helpers and the schedule data type
        return "checks"
    if module == "fastgauss._plans" or module.startswith("fastgauss._plans."):
        return "plans"
    if module.startswith(BACKENDS):  # fastgauss.reference itself (the pinned public functions) is public
        return "backend"
    if module == "fastgauss._dispatch":
        return "dispatch"
    if module in PUBLIC or module in TOOLS:
        return "public"
    if module == "fastgauss.interop" or module.startswith("fastgauss.interop."):
        return "interop"  # adapters at the edge (torch, dask): above the public ops, which they call
    raise AssertionError(f"{module} is in no layer: place it in tests/test_architecture.py's layer()")


def backend_package(module):
    return ".".join(module.split(".")[:2]) if layer(module) == "backend" else None


def imports(module):
    """[(imported fastgauss module, names taken from it)] for every import statement of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names if alias.name.split(".")[0] == "fastgauss"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            if source.split(".")[0] != "fastgauss":
                continue
            names = []
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:  # `from package import module`
                    found.append((f"{source}.{alias.name}", ()))
                else:
                    names.append(alias.name)
            if names:
                found.append((source, tuple(names)))
    return [(target, names) for target, names in found if target != module]


GRAPH = {module: imports(module) for module in MODULES}


def test_the_graph_sees_the_package():
    for module in MODULES:
        layer(module)  # every module has a layer
    assert {"fastgauss.mvn", "fastgauss.cpu.mvn", "fastgauss.cuda.kl", "fastgauss._device.random"} <= set(MODULES)
    assert ("fastgauss._checks", ()) in GRAPH["fastgauss.cpu.kl"]
    assert any(target == "fastgauss._plans.stream" for target, _ in GRAPH["fastgauss.cpu.random"])
    for edges in GRAPH.values():
        for target, _ in edges:
            assert target in MODULES, f"unresolved import of {target}"


def test_imports_point_down():
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, edges in GRAPH.items()
        for target, _ in edges
        if LAYERS.index(layer(target)) > LAYERS.index(layer(module))
    ]
    assert not upward, "\n".join(upward)


def test_backends_import_no_public_module_and_no_other_backend():
    bad = []
    for module, edges in GRAPH.items():
        if layer(module) != "backend":
            continue
        for target, _ in edges:
            if target in PUBLIC:
                bad.append(f"{module} imports the public module {target}")
            elif layer(target) == "backend" and backend_package(target) != backend_package(module):
                bad.append(f"{module} imports {target}, another backend")
    assert not bad, "\n".join(bad)


def test_no_module_outside_a_backend_imports_its_private_names():
    bad = [
        f"{module} imports {name} from {target}"
        for module, edges in GRAPH.items()
        for target, names in edges
        if layer(target) == "backend" and backend_package(target) != backend_package(module)
        for name in names
        if name.startswith("_")
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    cycles, state, stack = [], {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target, _ in GRAPH[module]:
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


def test_backend_functions_are_defined_by_name():
    """No backend or plan module fills its namespace through globals(): grep finds every function."""
    bad = [
        module
        for module, path in MODULES.items()
        if layer(module) in ("backend", "plans")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "globals"
    ]
    assert not bad, f"globals() in {sorted(set(bad))}"


@pytest.mark.parametrize(
    "source, problem",
    [
        ("from fastgauss.mvn import summarize\n", "upward"),
        ("def f():\n    from fastgauss.random import default_rng\n", "upward"),
    ],
)
def test_the_checks_can_fail(tmp_path, monkeypatch, source, problem):
    """An upward import written into a backend module is seen, also inside a function."""
    fake = tmp_path / "fake.py"
    fake.write_text(source)
    monkeypatch.setitem(MODULES, "fastgauss.cpu.fake", fake)
    edges = imports("fastgauss.cpu.fake")
    assert edges and all(LAYERS.index(layer(t)) > LAYERS.index(layer("fastgauss.cpu.fake")) for t, _ in edges)


# --- the backend contract -----------------------------------------------------------------------


def _declared(function):
    """A function's parameters as the OPS contract writes them: names, "*" before keyword-only ones."""
    names = []
    for p in inspect.signature(function).parameters.values():
        assert p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY), f"{function.__qualname__}: {p} is {p.kind}"
        assert p.default is p.empty, f"{function.__module__}.{function.__qualname__}: {p.name} has a default"
        if p.kind == p.KEYWORD_ONLY and "*" not in names:
            names.append("*")
        names.append(p.name)
    return names


@pytest.mark.parametrize("op", sorted(_dispatch.OPS))
@pytest.mark.parametrize("backend", _dispatch.BACKENDS)
def test_every_backend_function_has_the_declared_arguments(op, backend):
    """Each op's reference, cpu and cuda functions take exactly the arguments OPS declares (importing
    fastgauss.cuda's modules needs numba.cuda, not a GPU: the simulator compiles nothing at import)."""
    if backend == "cuda" and _dispatch.cuda_unavailable_reason() is not None:
        pytest.skip("cuda backend not usable: " + _dispatch.cuda_unavailable_reason())
    contract = _dispatch.OPS[op]
    module = importlib.import_module(f"{_dispatch._PACKAGES[backend]}.{contract.family}")
    function = getattr(module, op)
    assert function.__module__ == module.__name__, f"{op} of {backend} is not defined in {module.__name__}"
    assert _declared(function) == contract.parameters()
    names = contract.parameters()
    positional = names[: names.index("*")] if "*" in names else names
    assert len(positional) <= 7, f"{op}: {len(positional)} positional arguments; make the rest keyword-only"
