#!/usr/bin/env bash
# End-to-end test of the extension in a real VS Code (code-server in headless Chromium)
# against the real server and the shipped model. Slow the first time (setup.sh installs
# code-server, cached afterwards); CI runs it after the fast suite.
#
#   editors/vscode/e2e/run.sh      # screenshots and code-server's log go to $E2E_ARTIFACTS
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
export E2E_CACHE=${E2E_CACHE:-$HOME/.cache/codecomplete/e2e}
export E2E_PYTHON=${E2E_PYTHON:-$ROOT/.venv/bin/python}
export E2E_VSIX=${E2E_VSIX:-$ROOT/editors/vscode/codecomplete.vsix}
export E2E_ARTIFACTS=${E2E_ARTIFACTS:-$ROOT/editors/vscode/e2e/artifacts}
"$HERE/setup.sh"
if [ ! -f "$E2E_VSIX" ]; then
    (cd "$ROOT/editors/vscode" && npm ci --no-audit --no-fund && npm run build && npm run package)
fi
# Imported from another folder, as VS Code starts it: an install that misses a package
# (an editable install older than pyproject.toml) fails here, not inside VS Code.
(cd / && "$E2E_PYTHON" -c "import server.cli") || {
    echo "e2e: $E2E_PYTHON cannot import codecomplete's server; run ./scripts/setup.sh" >&2
    exit 1
}
exec "$(cat "$E2E_CACHE/node.path")" "$HERE/e2e.mjs"
