#!/usr/bin/env bash
# Run the benchmark from a fresh clone: python -m bench in the project's virtualenv.
#   bench/run.sh [--quick] [any option of python -m bench]
# Uses .venv (created with python3 when missing), installs the service and the benchmark's
# own packages into it, then runs. wrk is installed by the harness (apt-get, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import app, asyncpg, uvicorn" 2>/dev/null; then
    python -m pip install --quiet -e .
fi
python -m pip install --quiet -r bench/requirements.txt
exec python -m bench "$@"
