"""Facts about the workspace's packages, for the Justfile and the release tooling.

python tools/pkg.py dir <package>       the package's folder (shared or packages/<name>)
python tools/pkg.py module <package>    its import name
python tools/pkg.py version <package>   its version
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dir(name: str) -> Path:
    path = ROOT / "shared" if name == "tri-shared" else ROOT / "packages" / name
    if not (path / "pyproject.toml").is_file():
        operators = sorted(p.parent.name for p in ROOT.glob("packages/*/pyproject.toml"))
        known = ["tri-shared", *operators]
        raise SystemExit(f"package: expected one of {', '.join(known)}, got {name!r}")
    return path


def module_name(name: str) -> str:
    return name.replace("-", "_")


def version(name: str) -> str:
    text = (package_dir(name) / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    if not match:
        raise SystemExit(f"{name}: no static version in pyproject.toml")
    return match.group(1)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("dir", "module", "version"):
        raise SystemExit(__doc__)
    what, name = sys.argv[1], sys.argv[2]
    if what == "dir":
        print(package_dir(name).relative_to(ROOT))
    elif what == "module":
        package_dir(name)
        print(module_name(name))
    else:
        print(version(name))
