# Sourced by scripts/demo and scripts/test: makes .venv match requirements.lock (fast no-op when it does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

if ! command -v uv >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/uv" ]; then
    echo "== installing uv (from PyPI)"
    python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
fi
UV=$(command -v uv || echo "$HOME/.local/bin/uv")

stamp=.venv/.lock-installed
if [ ! -f "$stamp" ] || ! cmp -s requirements.lock "$stamp"; then
    echo "== creating .venv from requirements.lock"
    [ -x .venv/bin/python ] || "$UV" venv --quiet --python 3.11 .venv
    VIRTUAL_ENV="$ROOT/.venv" "$UV" pip sync --quiet requirements.lock
    cp requirements.lock "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"

[ -x /usr/lib/postgresql/15/bin/initdb ] || {
    echo "PostgreSQL 15 server binaries are missing: apt-get install -y postgresql-15" >&2; exit 1; }
