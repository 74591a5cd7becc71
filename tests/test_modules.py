"""Names of imported modules for the identifier re-ranker: found without running code."""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from server import identifiers, modules


@pytest.fixture
def package_on_path(tmp_path, monkeypatch):
    """A package whose code would fail loudly if anything imported it."""
    pkg = tmp_path / "boobytrap"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "raise SystemExit('imported!')\n"
        "def open_door(): ...\n"
        "class Keeper: ...\n"
        "LIMIT: int = 3\n"
        "try:\n    from json import loads as parse_json\nexcept ImportError:\n    pass\n"
        "if LIMIT:\n    lever = 1\n")
    (pkg / "traps.py").write_text("from os.path import *\nspring = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    modules.module_file.cache_clear()
    yield "boobytrap"
    modules.module_file.cache_clear()


def test_import_bindings():
    text = ("import os\nimport numpy as np, json  # comment\n"
            "from collections import abc as cabc, OrderedDict\n"
            "import xml.etree.ElementTree as ET\nfrom pkg.sub import (a, b\n")
    assert modules.import_bindings(text) == {
        "os": "os", "np": "numpy", "json": "json", "ET": "xml.etree.ElementTree",
        "cabc": "collections.abc", "OrderedDict": "collections.OrderedDict",
        "a": "pkg.sub.a", "b": "pkg.sub.b"}


def test_source_names_without_importing(package_on_path):
    names = modules.names_of(package_on_path)
    assert package_on_path not in sys.modules                 # nothing was run
    assert names.closed
    assert {"open_door", "Keeper", "LIMIT", "parse_json", "lever", "traps", "sub"} \
        <= names.names
    traps = modules.names_of(f"{package_on_path}.traps")
    assert "spring" in traps.names and not traps.closed        # a star import: open
    assert modules.names_of("no_such_module_anywhere") is None
    assert modules.module_file(".relative") is None


def test_receiver_and_from_import_positions(package_on_path):
    doc = "import boobytrap as bt\nimport os\nvalue = bt."
    assert modules.module_for_receiver(doc) == "boobytrap"
    assert modules.module_for_receiver("import os\nx = os.path.") == "os.path"
    assert modules.module_for_receiver("value = bt.") is None          # not imported
    assert modules.module_for_receiver("import os\nx = y.") is None
    assert modules.module_for_from_import("from boobytrap import Keeper, ") == "boobytrap"
    assert modules.module_for_from_import("from boobytrap import (") == "boobytrap"
    assert modules.module_for_from_import("x = 1") is None
    assert "open_door" in modules.module_names_at("from boobytrap import ").names


def test_candidates_after_a_module_keep_only_its_names(package_on_path):
    prefix = "import boobytrap\nopen_file = 1\nopen_file += 1\nboobytrap.op"
    counts = identifiers.name_counts(prefix, "", "op")
    plain = identifiers.candidates(counts, "op")
    assert plain[0] == "open_file" and "open" in plain          # document names, builtins
    members = modules.module_names_at(prefix[:-2])
    assert identifiers.candidates(counts, "op", members) == ["open_door"]
    # An open list (star import) adds names but drops none of the document's.
    open_list = modules.ModuleNames(frozenset({"opus"}), closed=False)
    assert identifiers.candidates(Counter({"open_file": 2}), "op", open_list) == \
        ["open_file", "opus"]


def test_user_folders_are_searched_first(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "localmod.py").write_text("def only_here(): ...\n")
    assert modules.module_names_at("import localmod\nx = localmod.") is None
    names = modules.module_names_at("import localmod\nx = localmod.", (str(project),))
    assert names.names == {"only_here"} and names.closed
