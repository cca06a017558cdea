"""Imports only go down the layers of docs/architecture.md, and no component names a model."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "anomalib_ext"
TOOLS = {"benchmark", "demo", "deploy", "cli", "plots", "callbacks"}
FORBIDDEN = {
    "components": {"models", "data"} | TOOLS,
    "callbacks": {"models", "data", "components"} | (TOOLS - {"callbacks"}),
    "data": {"models", "components"} | TOOLS,
    "models": {"data"} | TOOLS,
    "deploy": {"models", "benchmark", "demo", "cli"},
}
ALLOWED = {("data/__init__.py", "anomalib_ext.callbacks")}  # the deprecated anomalib_ext.data.PerCategoryMetrics


def package_imports() -> list[tuple[str, str]]:
    """``(file relative to the package, imported anomalib_ext module)`` for every import in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anomalib_ext."):
                found.append((relative, node.module))
            elif isinstance(node, ast.ImportFrom) and node.level >= 2 and relative.startswith("models/"):
                found.append((relative, f"anomalib_ext.models.{node.module}"))  # ``from ..other_model``
    return found


def test_imports_follow_the_layers() -> None:
    """No module imports a layer that docs/architecture.md puts above it (only the deprecated alias is allowed)."""
    wrong = []
    for relative, module in package_imports():
        layer, target = relative.split("/")[0].removesuffix(".py"), module.split(".")[1]
        if target in FORBIDDEN.get(layer, set()) and (relative, module) not in ALLOWED:
            wrong.append(f"{relative} imports {module}")
    assert not wrong, wrong


def test_models_do_not_import_each_other() -> None:
    """A model package imports only itself among the models; shared code lives in components."""
    wrong = [
        f"{relative} imports {module}"
        for relative, module in package_imports()
        if relative.startswith("models/")
        and module.startswith("anomalib_ext.models.")
        and len(module.split(".")) > 2
        and module.split(".")[2] != relative.split("/")[1]
    ]
    assert not wrong, wrong


def test_no_component_names_a_model_in_code() -> None:
    """No name or string in components' code (docstrings aside) mentions a model: components are model-neutral."""
    names = ("rd4ad", "rstpm", "uniad", "efficientad")
    wrong = []
    for path in sorted((PACKAGE / "components").glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and ast.get_docstring(node) is not None
        }
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Name | ast.Attribute | ast.FunctionDef | ast.ClassDef):
                text = getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "name", None)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
            if text and any(name in text.lower() for name in names):
                wrong.append(f"{path.name}:{node.lineno}: {text[:60]!r}")
    assert not wrong, wrong
