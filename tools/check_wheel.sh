#!/usr/bin/env bash
# Build <package>'s wheel (and tri-shared's), install both alone into a fresh virtual
# environment, and run the package's own tests against the installed copy.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
pkg=${1:?usage: check_wheel.sh <package>}
dir=$(python tools/pkg.py dir "$pkg")
module=$(python tools/pkg.py module "$pkg")

for p in $(printf '%s\n' tri-shared "$pkg" | sort -u); do
  rm -rf "dist/$p"
  uv build --quiet --no-sources --package "$p" --out-dir "dist/$p" --wheel
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
uv venv --quiet "$tmp/venv"
wheels=$(ls dist/tri-shared/*.whl; [ "$pkg" = tri-shared ] || ls dist/"$pkg"/*.whl)
# shellcheck disable=SC2086
uv pip install --quiet --python "$tmp/venv/bin/python" $wheels pytest numpy matplotlib

# The tests run from a copy outside the workspace, so only the installed package can be imported.
mkdir -p "$tmp/run"
cp -r "$dir/tests" "$tmp/run/tests"
# Some tests read the package's bench scripts (e.g. which configs a sweep timed).
if [ -d "$dir/bench" ]; then cp -r "$dir/bench" "$tmp/run/bench"; fi
cp conftest.py "$tmp/run/"
cd "$tmp/run"
location=$("$tmp/venv/bin/python" -c "import $module; print($module.__file__)")
case "$location" in
  "$tmp/venv/"*) echo "testing the installed $module at $location" ;;
  *) echo "expected $module from the fresh environment, got $location" >&2; exit 1 ;;
esac
"$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider -c "$root/pyproject.toml" --rootdir . tests
