import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import ModelDirError, load_model_dir, save_model_dir


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    return d


def test_save_load_round_trip_is_exact(tmp_path, tiny):
    out = save_model_dir(tmp_path / "copy", tiny.model, tiny.tokenizer, tiny.meta)
    again = load_model_dir(out, device="cpu", dtype="float32")
    for (n1, a), (n2, b) in zip(tiny.model.state_dict().items(),
                                again.model.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b), n1
    assert again.tokenizer.to_str() == tiny.tokenizer.to_str()
    assert again.meta == tiny.meta
    assert again.config == tiny.config
    assert sorted(p.name for p in out.iterdir()) == [
        "codecomplete.json", "config.json", "model.safetensors", "tokenizer.json"]


def test_bf16_save_halves_the_file(tmp_path, tiny):
    a = save_model_dir(tmp_path / "f32", tiny.model, tiny.tokenizer, tiny.meta)
    b = save_model_dir(tmp_path / "bf16", tiny.model, tiny.tokenizer, tiny.meta,
                       dtype=torch.bfloat16)
    sa = (a / "model.safetensors").stat().st_size
    sb = (b / "model.safetensors").stat().st_size
    assert sb < 0.55 * sa
    assert json.loads((b / "config.json").read_text())["torch_dtype"] == "bfloat16"
    load_model_dir(b, device="cpu")


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def break_missing_dir(d):
    shutil.rmtree(d)


def break_missing_config(d):
    (d / "config.json").unlink()


def break_config_json(d):
    (d / "config.json").write_text("{not json")


def break_architecture(d):
    _edit_json(d / "config.json", architectures=["GPT2LMHeadModel"], model_type="gpt2")


def break_config_fields(d):
    data = json.loads((d / "config.json").read_text())
    del data["hidden_size"]
    (d / "config.json").write_text(json.dumps(data))


def break_missing_weights(d):
    (d / "model.safetensors").unlink()


def break_truncated_weights(d):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def break_garbage_weights(d):
    (d / "model.safetensors").write_bytes(b"\x80\x04pickle? no thanks" * 10)


def break_missing_tensor(d):
    f = d / "model.safetensors"
    t = load_file(f)
    t.pop("model.norm.weight")
    save_file(t, f)


def break_tensor_shape(d):
    f = d / "model.safetensors"
    t = load_file(f)
    t["model.norm.weight"] = torch.ones(3)
    save_file(t, f)


def break_config_size(d):
    _edit_json(d / "config.json", intermediate_size=96)


def break_missing_tokenizer(d):
    (d / "tokenizer.json").unlink()


def break_tokenizer_json(d):
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')


def break_tokenizer_fim(d):
    _edit_json(d / "codecomplete.json", fim={"prefix": "<PRE>", "middle": "<MID>",
                                               "suffix": "<SUF>"})


def break_vocab_mismatch(d):
    _edit_json(d / "config.json", vocab_size=512)


def break_meta_json(d):
    (d / "codecomplete.json").write_text("[1, 2")


def break_meta_order(d):
    _edit_json(d / "codecomplete.json", fim_order="middle-first")


CASES = [
    (break_missing_dir, "does not exist"),
    (break_missing_config, r"config\.json is missing"),
    (break_config_json, r"config\.json is not valid JSON"),
    (break_architecture, r"config\.json is not a usable Llama config: unsupported architecture"),
    (break_config_fields, r"config\.json .*missing required fields \['hidden_size'\]"),
    (break_missing_weights, r"model\.safetensors is missing"),
    (break_truncated_weights, r"model\.safetensors is corrupt"),
    (break_garbage_weights, r"model\.safetensors is corrupt"),
    (break_missing_tensor, r"model\.safetensors does not match config\.json: missing"),
    (break_tensor_shape, r"model\.safetensors tensor model\.norm\.weight has shape \(3,\)"),
    (break_config_size, r"model\.safetensors tensor .* has shape"),
    (break_missing_tokenizer, r"tokenizer\.json is missing"),
    (break_tokenizer_json, r"tokenizer\.json is not a valid tokenizers file"),
    (break_tokenizer_fim, r"tokenizer\.json does not fit .*codecomplete\.json"),
    (break_vocab_mismatch, r"tokenizer\.json has 1024 tokens but .*config\.json declares"),
    (break_meta_json, r"codecomplete\.json is not valid JSON"),
    (break_meta_order, r"codecomplete\.json is invalid: fim_order"),
]


@pytest.mark.parametrize(("breaker", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_model_dirs_give_one_clear_sentence(model_dir, breaker, message):
    breaker(model_dir)
    with pytest.raises(ModelDirError, match=message) as info:
        load_model_dir(model_dir, device="cpu")
    text = str(info.value)
    assert "\n" not in text and text.endswith(".")
    assert str(model_dir) in text


def test_directory_without_codecomplete_json_uses_default_fim_names(model_dir):
    with_meta = load_model_dir(model_dir, device="cpu")
    (model_dir / "codecomplete.json").unlink()
    loaded = load_model_dir(model_dir, device="cpu")
    assert loaded.meta.fim_order == "psm"
    # the FIM tokens are found by their default names, with the ids the model was given
    tok, hf = loaded.tokenizer, loaded.tokenizer.hf
    assert (tok.fim_prefix_id, tok.fim_middle_id, tok.fim_suffix_id, tok.eot_id) == (
        hf.token_to_id("<fim_prefix>"), hf.token_to_id("<fim_middle>"),
        hf.token_to_id("<fim_suffix>"), hf.token_to_id("<|endoftext|>"))
    assert None not in (tok.fim_prefix_id, tok.fim_middle_id, tok.fim_suffix_id)
    wt = with_meta.tokenizer
    assert (tok.fim_prefix_id, tok.fim_middle_id, tok.fim_suffix_id) == (
        wt.fim_prefix_id, wt.fim_middle_id, wt.fim_suffix_id)


def test_save_is_atomic_no_temp_files_left_and_the_folder_is_readable(tmp_path, tiny):
    """The new folder is built beside the target and renamed into place: nothing of it is
    left in the parent, and the folder has the permissions mkdir would give (umask 022:
    0755), not mkdtemp's 0700."""
    old = os.umask(0o022)
    try:
        out = save_model_dir(tmp_path / "a", tiny.model, tiny.tokenizer, tiny.meta)
        again = save_model_dir(tmp_path / "a", tiny.model, tiny.tokenizer, tiny.meta)
    finally:
        os.umask(old)
    assert out == again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert out.stat().st_mode & 0o777 == 0o755


def test_saving_never_replaces_a_folder_that_is_not_a_model_directory(tmp_path, tiny):
    projects = tmp_path / "projects"
    projects.mkdir()
    (projects / "notes.txt").write_text("mine")
    with pytest.raises(ModelDirError, match=r"projects.*not a codecomplete model directory"):
        save_model_dir(projects, tiny.model, tiny.tokenizer, tiny.meta)
    assert (projects / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["projects"]   # no temp left
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ModelDirError):
        save_model_dir(a_file, tiny.model, tiny.tokenizer, tiny.meta)
    assert a_file.read_text() == "x"


def test_replacing_a_model_directory_keeps_extra_files_and_survives_a_failure(
        tmp_path, tiny, monkeypatch):
    out = save_model_dir(tmp_path / "m", tiny.model, tiny.tokenizer, tiny.meta)
    (out / "NOTES.md").write_text("how I trained it")
    before = (out / "model.safetensors").read_bytes()

    import model.checkpoint as checkpoint

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "atomic_write_text", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(out, tiny.model, tiny.tokenizer, tiny.meta, dtype=torch.bfloat16)
    assert (out / "model.safetensors").read_bytes() == before       # old one intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    monkeypatch.undo()
    save_model_dir(out, tiny.model, tiny.tokenizer, tiny.meta, dtype=torch.bfloat16)
    assert (out / "NOTES.md").read_text() == "how I trained it"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (out / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_export_cli_refuses_to_replace_a_users_folder(tmp_path, tiny):
    from training.export import main as export_main

    run = tmp_path / "runs" / "x"
    save_model_dir(run / "best", tiny.model, tiny.tokenizer, tiny.meta)
    projects = tmp_path / "projects"
    projects.mkdir()
    (projects / "notes.txt").write_text("mine")
    assert export_main(["--run", str(run), "--out", str(projects)]) == 2
    assert (projects / "notes.txt").read_text() == "mine"
    assert export_main(["--run", str(run), "--out", str(tmp_path / "new")]) == 0
    assert load_model_dir(tmp_path / "new", device="cpu") is not None
