#!/usr/bin/env bash
# What a user of the wheel gets: build it, install it (not editable) into a fresh virtual
# environment, and run `distillery run` on a small slice from a folder outside the checkout.
#
#   .ci/wheel_check.sh        (.ci/run calls it after `make test`; ~2-3 min on 2 CPU cores)
#
# The venv sees the system's packages (--system-site-packages: torch, transformers and the
# embedded models come from `make install`), but distillery itself only from the wheel:
# the script checks that `annotate` and the task files resolve inside the venv.
set -euo pipefail
PY=${PY:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH

# The sources as a fresh clone has them (tracked and new files, nothing git ignores), so a
# stale build/ or run output in the working tree cannot slip into the wheel.
mkdir "$work/src"
cd "$root"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  if [ -f "$f" ]; then cp --parents "$f" "$work/src/"; fi  # a tracked file deleted here is listed too
done
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/distillery-*.whl)
echo "wheel: $(basename "$wheel") ($(( $(stat -c %s "$wheel") / 1024 )) KiB)"

"$PY" -m venv --system-site-packages "$work/venv"
# --force-reinstall: the system may hold an editable distillery of the same version.
"$work/venv/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel"

mkdir "$work/outside" && cd "$work/outside"
"$work/venv/bin/python" - "$work/venv" <<'EOF'
import sys
from pathlib import Path

import distillery.annotate
from distillery import cli
from distillery.core.tasks import TASKS_DIR, load_task

venv = Path(sys.argv[1]).resolve()
for name, path in [("distillery.annotate", distillery.annotate.__file__), ("distillery.cli", cli.__file__), ("task files", TASKS_DIR)]:
    if not Path(path).resolve().is_relative_to(venv):
        sys.exit(f"wheel check: {name} resolves to {path}, outside the venv {venv}")
load_task("sentiment-binary")
print(f"imports and task files come from the venv: {TASKS_DIR}")
EOF
"$work/venv/bin/distillery" run --limit 60 --epochs 1 --min-steps 5 --speed-rows 16 --device cpu --out ./run
for f in report.md metrics.json student; do
  [ -e "run/$f" ] || { echo "wheel check: run/$f missing after distillery run" >&2; exit 1; }
done
# The README's Python API script, run as a user would copy it (it writes its own run folder).
"$PY" -c 'import re, sys; b = re.search(r"## Python API.*?```python\n(.*?)```", open(sys.argv[1]).read(), re.S); print(b.group(1))' \
  "$root/README.md" > api.py
"$work/venv/bin/python" api.py
[ -e data/runs/api/student/distillery_student.json ] || { echo "wheel check: the README's API script left no student" >&2; exit 1; }
echo "wheel check passed in $(( $(date +%s) - start )) s"
