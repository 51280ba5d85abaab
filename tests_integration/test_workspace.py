"""Workspace consistency: versions, dependency ranges, package independence."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ImportError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
OPERATORS = sorted(p.parent for p in ROOT.glob("packages/*/pyproject.toml"))
ALL = [ROOT / "shared", *OPERATORS]


def _project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


def _module(folder: Path) -> str:
    return _project(folder)["name"].replace("-", "_")


@pytest.mark.parametrize("folder", ALL, ids=lambda p: p.name)
def test_dunder_version_matches_pyproject(folder):
    module = importlib.import_module(_module(folder))
    assert module.__version__ == _project(folder)["version"]


@pytest.mark.parametrize("folder", OPERATORS, ids=lambda p: p.name)
def test_tri_shared_range_admits_the_workspace_version(folder):
    shared_version = _project(ROOT / "shared")["version"]
    deps = [d for d in _project(folder)["dependencies"] if re.match(r"tri-shared\b", d)]
    assert len(deps) == 1, f"{folder.name}: expected one tri-shared requirement, got {deps}"
    spec = SpecifierSet(deps[0].removeprefix("tri-shared"))
    assert ">=" in str(spec) and "<" in str(spec).replace("<=", ""), (
        f"{folder.name}: tri-shared range must be bounded, got {spec}"
    )
    assert spec.contains(shared_version), (
        f"{folder.name}: its range {spec} does not admit tri-shared {shared_version}"
    )


@pytest.mark.parametrize("folder", ALL, ids=lambda p: p.name)
def test_package_files_present(folder):
    for name in ("README.md", "CHANGELOG.md", "pyproject.toml"):
        assert (folder / name).is_file(), f"{folder.name}: missing {name}"
    assert (folder / "src" / _module(folder) / "py.typed").is_file()
    assert "## Unreleased" in (folder / "CHANGELOG.md").read_text()


@pytest.mark.parametrize("folder", OPERATORS, ids=lambda p: p.name)
def test_operator_never_imports_another_operator(folder):
    others = {_module(f) for f in OPERATORS} - {_module(folder)}
    pattern = re.compile(rf"^\s*(from|import)\s+({'|'.join(others)})\b", re.MULTILINE)
    for source in (folder / "src").rglob("*.py"):
        match = pattern.search(source.read_text())
        assert match is None, f"{source.relative_to(ROOT)} imports {match.group(2)}"


@pytest.mark.parametrize("folder", OPERATORS, ids=lambda p: p.name)
def test_operator_imports_with_only_tri_shared_beside_it(folder):
    """Import the package in a fresh interpreter whose path holds only its source and
    tri-shared's, while the other operator packages are made unimportable."""
    others = sorted({_module(f) for f in OPERATORS} - {_module(folder)})
    code = (
        "import sys\n"
        f"for name in {others!r}: sys.modules[name] = None\n"
        f"sys.path[:0] = [{str(folder / 'src')!r}, {str(ROOT / 'shared' / 'src')!r}]\n"
        f"import {_module(folder)} as m\n"
        "assert m.__all__, 'empty public API'\n"
        "for name in m.__all__: getattr(m, name)\n"
    )
    env = {"TRITON_INTERPRET": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
