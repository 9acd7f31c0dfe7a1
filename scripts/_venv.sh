# Sourced by scripts/dev and scripts/test: make .venv with the project installed, once per
# change of pyproject.toml or of this file. Needs only python3 (3.11 or newer).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml scripts/_venv.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    # setuptools too: the copy a Python 3.11 venv starts with has known vulnerabilities.
    .venv/bin/python -m pip install --quiet --upgrade pip setuptools
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
