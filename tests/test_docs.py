"""The README and docs/ stay true to the code: what they link exists, the commands they
name exist, and every setting the server accepts is documented. A newcomer's first five
minutes are the README; a dead link or a renamed module there is a broken first step."""

from __future__ import annotations

import re
from pathlib import Path

from completion.settings import RULES

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODULE = re.compile(r"-m ((?:benchmarks|training|scraper|server)(?:\.[a-z_0-9]+)?)(?![\w.])")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_in_the_readme_and_docs_resolves():
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):     # http:, https:, mailto:
                continue
            assert not target.startswith("../shared"), f"{page.name} links outside the project"
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to missing {target}"
            assert ROOT in path.parents, f"{page.relative_to(ROOT)} links outside: {target}"
            checked += 1
    assert checked >= 10, "the link pattern found almost nothing: the check is not checking"


def test_every_module_the_readme_and_docs_run_exists():
    """`python -m benchmarks.NAME`, `-m training.NAME`, `-m scraper ...`: each module is
    there (the README once listed a module that had been deleted)."""
    named = set()
    for page in PAGES:
        named |= set(MODULE.findall(page.read_text()))
    assert {"benchmarks.repo_context", "benchmarks.latency", "training.train"} <= named
    for module in named:
        parts = module.split(".")
        base = ROOT.joinpath(*parts)
        assert base.with_suffix(".py").is_file() or (base / "__main__.py").is_file(), module


def test_the_server_doc_lists_every_setting_with_its_default():
    from completion.settings import EngineSettings

    text = (ROOT / "docs/server.md").read_text()
    defaults = EngineSettings()
    for name in RULES:
        row = re.search(rf"^\| `{name}` \| `([^`]*)` \|", text, re.M)
        assert row, f"docs/server.md does not list the setting {name}"
        value = getattr(defaults, name)
        shown = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) \
            else value
        expected = f'"{shown}"' if isinstance(value, str) else str(shown)
        assert row.group(1) == expected or float(row.group(1)) == value, (name, row.group(1))


def test_the_readme_results_name_a_command_per_row():
    """One table of measured results, each row naming the benchmark that produced it."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| what | result | command |"):]
    rows = [r for r in table.split("\n\n")[0].splitlines()[2:] if r.startswith("|")]
    assert len(rows) >= 5
    for row in rows:
        command = row.rstrip(" |").rsplit("|", 1)[1]
        assert "python -m benchmarks." in command or "the same" in command, row
