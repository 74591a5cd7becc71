"""The VS Code extension is really built, type-checked, tested and packaged here.

`npm test` runs the extension's unit tests against a mocked `vscode` module (VS Code's
own window cannot run on this machine) and a Node integration test that drives the real
Python server over stdio with vscode-jsonrpc, the protocol library VS Code's client uses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

EXT = Path(__file__).resolve().parents[1] / "editors" / "vscode"


def npm(*args: str, env: dict | None = None, timeout: int = 600) -> str:
    r = subprocess.run(["npm", *args], cwd=EXT, capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, \
        f"npm {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def installed() -> Path:
    assert shutil.which("npm"), "npm is required to build the VS Code extension"
    lock, modules = EXT / "package-lock.json", EXT / "node_modules" / ".package-lock.json"
    if not modules.exists() or modules.stat().st_mtime < lock.stat().st_mtime:
        npm("ci", "--no-audit", "--no-fund")
    return EXT


def test_typecheck_build_and_package(installed):
    npm("run", "typecheck")
    npm("run", "build")
    assert (EXT / "dist" / "extension.js").stat().st_size > 10_000
    vsix = EXT / "codecomplete.vsix"
    vsix.unlink(missing_ok=True)
    npm("run", "package")
    with zipfile.ZipFile(vsix) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("extension/package.json"))
    assert {"extension/dist/extension.js", "extension/package.json"} <= names
    assert manifest["main"] == "./dist/extension.js"
    major = int(manifest["dependencies"]["vscode-languageclient"].lstrip("^~").split(".")[0])
    assert major >= 10                                     # inline completion built in
    assert not any("node_modules" in n for n in names)     # bundled by esbuild


def test_unit_and_integration_tests(installed, tiny_model_dir):
    env = dict(os.environ, CODECOMPLETE_TEST_PYTHON=sys.executable,
               CODECOMPLETE_TEST_MODEL=str(tiny_model_dir), OMP_NUM_THREADS="1")
    out = npm("test", env=env)
    passed = re.search(r"^# pass (\d+)$", out, re.M)
    assert "# fail 0" in out and "# cancelled 0" in out and passed, out[-2000:]
    assert int(passed.group(1)) >= 12, out[-2000:]        # none silently left out
