"""The import direction of the packages: ``bounds`` and ``datamodules`` are leaves (README, Development).

``reporting`` (the reports of ``certify.py``) may use ``bounds`` and ``callbacks``; ``lightning_modules`` (the
training modules and the zoo) may not import the reports; only the scripts wire everything together.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_MODULES = {"bounds", "callbacks", "datamodules", "lightning_modules", "reporting", "cli", "certify", "train",
                   "figure2", "benchmarks", "tests"}
# What each package may import from the project besides itself (README, Development).
ALLOWED = {"bounds": set(), "datamodules": set(), "callbacks": {"bounds"},
           "lightning_modules": {"bounds", "callbacks"}, "reporting": {"bounds", "callbacks"}}


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
    assert "bounds" in project_imports(ROOT / "reporting" / "running.py")
    assert "reporting" in project_imports(ROOT / "certify.py")


def test_lightning_modules_holds_only_lightning_modules_and_the_zoo():
    # The reports and the gathering across ranks moved out (to reporting/ and callbacks/gathering.py).
    names = {path.stem for path in (ROOT / "lightning_modules").glob("*.py")}
    assert not names & {"certification", "attack_report", "acts_report", "acts_tables", "gathering"}


def test_no_source_file_is_much_longer_than_300_lines_unless_it_says_it_is_one_concept():
    long = {}
    for package in ("bounds", "callbacks", "datamodules", "reporting", "lightning_modules", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > 320 and "one concept" not in text.split('"""')[1]:
                long[str(path.relative_to(ROOT))] = text.count("\n")
    for script in ("cli.py", "certify.py", "train.py", "figure2.py"):
        lines = (ROOT / script).read_text().count("\n")
        if lines > 320:
            long[script] = lines
    assert not long, f"files over about 300 lines that do not say they are one concept: {long}"
