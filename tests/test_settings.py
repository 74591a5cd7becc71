"""Settings from the client: each value is checked for type and range, a refused one keeps
the previous value and is named in one sentence."""

from __future__ import annotations

import math

import pytest

from completion.settings import EngineSettings, update_settings

CONTEXT = 1024


@pytest.mark.parametrize("name, value", [
    ("max_tokens", None), ("max_tokens", 0), ("max_tokens", CONTEXT), ("max_tokens", "64"),
    ("max_tokens", 2.5), ("max_tokens", True),
    ("enable", None), ("enable", "yes"), ("enable", 1),
    ("candidates", 0), ("candidates", 100),
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf),
    ("top_p", 1.5), ("top_p", 0), ("context_tokens", 0), ("seed", -1), ("seed", "x"),
    ("python", 3), ("python", None), ("multiline", "sometimes"), ("multiline", None),
])
def test_a_refused_value_keeps_the_previous_one(name, value):
    settings = EngineSettings()
    before = getattr(settings, name)
    problems = update_settings(settings, {name: value}, CONTEXT)
    assert getattr(settings, name) == before
    assert len(problems) == 1
    assert problems[0].startswith(f"setting {name}=") and problems[0].endswith(".")
    assert "keeping" in problems[0] and "\n" not in problems[0]


def test_valid_values_are_taken_and_a_null_does_not_poison_later_ones():
    settings = EngineSettings()
    assert update_settings(settings, {"max_tokens": None}, CONTEXT)
    assert update_settings(settings, {"codecomplete": {
        "max_tokens": 32, "enable": False, "temperature": 0, "top_p": 1, "candidates": 3,
        "seed": None, "context_tokens": 2048, "other_extension": "ignored"}}, CONTEXT) == []
    assert (settings.max_tokens, settings.enable, settings.temperature, settings.top_p,
            settings.candidates, settings.seed) == (32, False, 0, 1, 3, None)
    assert settings.max_tokens == 32 and isinstance(settings.max_tokens, int)
    assert update_settings(settings, {"max_tokens": 64.0}, CONTEXT) == []
    assert settings.max_tokens == 64 and isinstance(settings.max_tokens, int)


def test_not_a_settings_object_is_ignored():
    settings = EngineSettings()
    assert update_settings(settings, None, CONTEXT) == []
    assert update_settings(settings, ["max_tokens", 3], CONTEXT) == []
    assert settings == EngineSettings()


def test_every_server_setting_is_reachable_from_both_editors():
    """One source of truth: the server's RULES. VS Code's package.json offers each (camel
    case, with the server's name in its description and the same static bounds), the
    extension sends each under the server's name, and the Neovim README lists each."""
    import json
    import re
    from pathlib import Path

    from completion.settings import RULES

    root = Path(__file__).resolve().parents[1]
    props = json.loads((root / "editors/vscode/package.json").read_text())[
        "contributes"]["configuration"]["properties"]
    sent = (root / "editors/vscode/src/settings.ts").read_text()
    sent = sent[sent.index("export function serverSettings"):]
    sent = sent[:sent.index("\n}\n")]
    sent_names = set(re.findall(r"^\s+(\w+):", sent, re.M))
    readme = (root / "editors/neovim/README.md").read_text()
    for name, rule in RULES.items():
        camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), name)
        prop = props.get(f"codecomplete.{camel}")
        assert prop is not None, f"VS Code has no codecomplete.{camel}"
        assert f"`{name}`" in prop["description"], name
        if rule.low is not None and not rule.low_open:
            assert prop.get("minimum") == rule.low, name
        if rule.low_open:
            assert prop.get("exclusiveMinimum") == rule.low, name
        if rule.high is not None:
            assert prop.get("maximum") == rule.high, name
        assert f"| `{name}` |" in readme, f"the Neovim README does not list {name}"
    assert sent_names == set(RULES)


def test_the_defaults_the_editors_send_are_accepted_for_the_shipped_models_context():
    """A default the server refuses is a warning on every start for every user (VS Code
    sent workspace_context_tokens=384, which a 512-token model refused)."""
    import json
    import re
    from dataclasses import asdict
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shipped = json.loads((root / "model/default/codecomplete.json").read_text())["context_size"]
    props = json.loads((root / "editors/vscode/package.json").read_text())[
        "contributes"]["configuration"]["properties"]
    defaults = {re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key.split(".")[1]):
                prop["default"] for key, prop in props.items() if "default" in prop}
    server = asdict(EngineSettings())
    sent = {name: defaults[name] for name in server if name in defaults}
    assert len(sent) >= 10
    for values in (server, sent):
        assert update_settings(EngineSettings(), values, shipped) == []
