"""The import direction of the packages: ``bounds`` and ``datamodules`` are leaves (README, Development)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_MODULES = {"bounds", "callbacks", "datamodules", "lightning_modules", "cli", "certify", "train", "figure2",
                   "benchmarks", "tests"}
# What each package may import from the project besides itself (README, Development).
ALLOWED = {"bounds": set(), "datamodules": set(), "callbacks": {"bounds"},
           "lightning_modules": {"bounds", "callbacks"}}


def project_imports(path: Path) -> set[str]:
    """Top-level project modules imported anywhere in ``path`` (including imports inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & PROJECT_MODULES


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_layout_allows(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = project_imports(path) - {package} - ALLOWED[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"{package} may import only {sorted(ALLOWED[package])} from the project: {offenders}"


def test_the_scan_sees_imports():
    # The check above is only as good as the scan: a known importer is seen.
    assert "bounds" in project_imports(ROOT / "certify.py")
