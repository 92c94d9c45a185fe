"""Imports point one way: config/parts -> methods -> families -> resolve -> engine -> API -> CLI/benchmarks.

The graph is read from the source with `ast` (module-level and function-level `import`s of hf_unlearn modules), so a
cycle or an upward import hidden inside a function fails here as well.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_unlearn"

# The layer of each module (longest matching prefix). A module imports modules of its own layer or lower ones only.
LAYERS = {
    # Foundation: file helpers, data splits, the diffusers pipeline, config files, checks, the card, trackers.
    "hf_unlearn._quiet": 0,
    "hf_unlearn.utils": 0,
    "hf_unlearn.passes": 0,
    "hf_unlearn.data": 0,
    "hf_unlearn.concept": 0,
    "hf_unlearn.pipelines": 0,
    "hf_unlearn.families.detect": 0,
    "hf_unlearn.validation": 0,
    "hf_unlearn.modelcard": 0,
    "hf_unlearn.modelcard_robustness": 0,
    "hf_unlearn.tracking": 0,
    # The configuration is plain data: it reads no registry (`hf_unlearn.resolve` fills its defaults).
    "hf_unlearn.config": 0,
    # Reliability helpers: config types, the divergence guard's checks, the output lock, bounded Hub calls.
    "hf_unlearn.config_checks": 0,
    "hf_unlearn.guard": 0,
    "hf_unlearn.run_lock": 0,
    "hf_unlearn.network": 0,
    # The four parts, and the metrics: they read models and data, never the loop.
    "hf_unlearn.parts": 1,
    "hf_unlearn.metrics": 1,
    "hf_unlearn.methods": 2,
    # Families never import the engine; the engine's side of the config fills its defaults from families and methods.
    "hf_unlearn.families": 3,
    "hf_unlearn.resolve": 4,
    # The engine: the loop's pieces, LoRA, saving, evaluation.
    "hf_unlearn.training": 5,
    "hf_unlearn.checkpointing": 5,
    "hf_unlearn.fsdp": 5,  # the engine's FSDP2 sharding, checkpoint shards and gather
    "hf_unlearn.lora": 5,
    "hf_unlearn.lora_stack": 5,
    "hf_unlearn.requests": 5,
    "hf_unlearn.hub": 5,
    "hf_unlearn.evaluation": 5,
    "hf_unlearn.run_checks": 5,
    "hf_unlearn.finetune": 5,  # plain fine-tuning with a family's loss (attacks, tiny models)
    "hf_unlearn.last_good": 5,  # the divergence guard's checks and copy, per step
    "hf_unlearn.theta0": 5,  # the mask and the geometry's state, before the first step
    "hf_unlearn.loading": 5,  # from_pretrained's loading: folders, adapters, the family
    "hf_unlearn.stopping": 5,  # the budget rule: reads the model through evaluation, never the loop
    "hf_unlearn.unlearner": 6,
    "hf_unlearn": 7,  # the package's public API (hf_unlearn/__init__.py)
    # Users of the API: command line, benchmarks, attacks, demo models.
    "hf_unlearn.tiny": 8,  # the tiny models the package trains: classifiers, class-conditional diffusion, colour
    "hf_unlearn.demos": 8,
    "hf_unlearn.cli_args": 8,
    "hf_unlearn.cli": 8,
    "hf_unlearn.evaluate_concept": 8,
    "hf_unlearn.benchmarks": 8,
    "hf_unlearn.attacks": 8,
    "hf_unlearn.worlds": 8,
    "hf_unlearn.audit": 8,  # the privacy audit trains shadows through the API
    "hf_unlearn.audit_cli": 8,  # the shape world: its models, trainer and prompts (benchmarks use them)
}

# Modules that need an optional dependency (the `nudity` extra: nudenet, onnxruntime, opencv): the only hf_unlearn
# modules another module may import inside a function.
OPTIONAL = {"hf_unlearn.metrics.nudity", "hf_unlearn.metrics.quality", "hf_unlearn.attacks.judges"}
# Command-line entry points import each command's stack when that command runs, so `--help` stays fast.
LAZY_ENTRY_POINTS = {"hf_unlearn.cli", "hf_unlearn.attacks.cli"}


def _modules() -> dict[str, Path]:
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        parts = ["hf_unlearn", *file.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = file
    return modules


def _targets(node, module: str, is_package: bool, modules) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        # `from pkg import sub` imports the submodule `pkg.sub` when there is one, else names of `pkg`.
        names = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
    found = []
    for name in names:
        while name and name not in modules:  # `import hf_unlearn.parts.saliency.x` style: the longest module
            name = name.rpartition(".")[0]
        if name.startswith("hf_unlearn"):
            found.append(name)
    return found


def _edges() -> list[tuple[str, str, bool, int]]:
    """(importer, imported, inside a function, line) for every import of an hf_unlearn module."""
    modules, edges = _modules(), []
    for module, file in modules.items():
        tree = ast.parse(file.read_text(), str(file))
        in_function = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                in_function.update(id(n) for n in ast.walk(fn) if n is not fn)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, module, file.name == "__init__.py", modules):
                    if target != module:
                        edges.append((module, target, id(node) in in_function, node.lineno))
    return edges


def _layer(module: str) -> int:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        pytest.fail(f"{module} has no layer in tests/test_imports.py LAYERS; add it where it belongs.")
    return LAYERS[max(matches, key=len)]


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_no_import_points_upward():
    upward = [
        f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)}) at line {line}"
        for src, dst, _, line in _edges()
        if _layer(dst) > _layer(src)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for src, dst, _, _ in _edges():
        graph.setdefault(src, set()).add(dst)
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_function_level_imports_only_for_optional_dependencies():
    lazy = [
        f"{src}:{line} imports {dst} inside a function"
        for src, dst, inside, line in _edges()
        if inside and dst not in OPTIONAL and src not in LAZY_ENTRY_POINTS
    ]
    assert not lazy, "move these imports to the top of the module:\n" + "\n".join(lazy)


def test_the_checker_sees_cycles_and_function_level_imports(tmp_path, monkeypatch):
    # The walk itself must be able to fail: a planted pair of modules importing each other inside functions.
    fake = tmp_path / "hf_unlearn"
    (fake / "parts").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "parts" / "__init__.py").write_text("def f():\n    from ..unlearner import Unlearner\n")
    (fake / "unlearner.py").write_text("from .parts import f\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    edges = {(s, d, inside) for s, d, inside, _ in _edges()}
    assert ("hf_unlearn.parts", "hf_unlearn.unlearner", True) in edges
    assert ("hf_unlearn.unlearner", "hf_unlearn.parts", False) in edges
    with pytest.raises(AssertionError, match="unlearner -> hf_unlearn.parts"):
        test_the_import_graph_has_no_cycle()
    with pytest.raises(AssertionError, match="layer 1"):
        test_no_import_points_upward()


def test_a_family_knows_no_method():
    # The engine tells a family what a method needs (e.g. `prepare_split(..., needs_remain=...)`).
    found = [
        f"{src} imports {dst} at line {line}"
        for src, dst, _, line in _edges()
        if src.startswith("hf_unlearn.families") and dst.startswith(("hf_unlearn.methods", "hf_unlearn.parts"))
    ]
    assert not found, "\n".join(found)


def test_config_is_plain_data():
    # Per-method and per-family defaults are filled on the engine side (`hf_unlearn.resolve`), not by the config.
    found = [
        f"{src} imports {dst} at line {line}"
        for src, dst, _, line in _edges()
        if src == "hf_unlearn.config"
        and dst.startswith(("hf_unlearn.methods", "hf_unlearn.families", "hf_unlearn.parts"))
    ]
    assert not found, "\n".join(found)
