"""Release one package: ``python tools/release.py <package> <major|minor|patch>``.

Refuses a dirty tree or failing lint/tests; then bumps the static version with uv, keeps
``__version__`` in step, moves the CHANGELOG's Unreleased notes under the new version,
commits and tags ``<package>-v<version>``. Releasing tri-shared with a breaking change
(a major bump, or a minor bump before 1.0) moves every operator package's tri-shared range
to the new series and notes it in their changelogs.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path

from pkg import ROOT, module_name, package_dir, version

PARTS = ("major", "minor", "patch")
RANGE = re.compile(r'"tri-shared>=([^,"]+),<([^"]+)"')


def run(*cmd: str) -> str:
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE)
    if result.returncode != 0:
        print(result.stdout)
        raise SystemExit(f"release: `{' '.join(cmd)}` failed (exit {result.returncode})")
    return result.stdout


def is_breaking(old: str, new: str) -> bool:
    o, n = [int(x) for x in old.split(".")[:2]], [int(x) for x in new.split(".")[:2]]
    return n[0] != o[0] or (n[0] == 0 and n[1] != o[1])


def move_unreleased(changelog: Path, new_version: str) -> None:
    text = changelog.read_text()
    if "## Unreleased" not in text:
        raise SystemExit(f"{changelog}: expected a '## Unreleased' section")
    today = datetime.date.today().isoformat()
    changelog.write_text(
        text.replace("## Unreleased", f"## Unreleased\n\n## {new_version} ({today})", 1)
    )


def note_unreleased(changelog: Path, line: str) -> None:
    text = changelog.read_text()
    changelog.write_text(text.replace("## Unreleased\n", f"## Unreleased\n\n- {line}\n", 1))


def set_dunder_version(name: str, new_version: str) -> None:
    init = package_dir(name) / "src" / module_name(name) / "__init__.py"
    text = init.read_text()
    updated, count = re.subn(
        r'^__version__ = "[^"]+"', f'__version__ = "{new_version}"', text, flags=re.MULTILINE
    )
    if count != 1:
        raise SystemExit(f"{init}: expected one __version__ line")
    init.write_text(updated)


def main(name: str, part: str) -> None:
    if part not in PARTS:
        raise SystemExit(f"part: expected one of {', '.join(PARTS)}, got {part!r}")
    folder = package_dir(name)
    if run("git", "status", "--porcelain").strip():
        raise SystemExit("release: the working tree is dirty; commit or stash first")
    run("ruff", "check", ".")
    run("ruff", "format", "--check", ".")
    run(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-n",
        "auto",
        str(folder.relative_to(ROOT)),
        "tests_integration",
    )

    old = version(name)
    run("uv", "version", "--bump", part, "--package", name, "--no-sync")
    new = version(name)
    set_dunder_version(name, new)
    move_unreleased(folder / "CHANGELOG.md", new)
    touched = [folder]
    if name == "tri-shared" and is_breaking(old, new):
        major, minor = (int(x) for x in new.split(".")[:2])
        upper = f"{major + 1}" if major else f"0.{minor + 1}"
        for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
            text = pyproject.read_text()
            if RANGE.search(text):
                pyproject.write_text(RANGE.sub(f'"tri-shared>={new},<{upper}"', text))
                note_unreleased(
                    pyproject.parent / "CHANGELOG.md", f"Requires tri-shared >={new},<{upper}."
                )
                touched.append(pyproject.parent)
    run("uv", "lock")
    run("git", "add", "uv.lock", *(str(p.relative_to(ROOT)) for p in touched))
    run("git", "commit", "-m", f"Release {name} {new}")
    run("git", "tag", f"{name}-v{new}")
    print(f"released {name} {new}: push with `git push --follow-tags`")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
