"""Other families' checkpoints load and run here exactly as in transformers.

No weights can be downloaded here, so each family is a tiny randomly initialised model made
with transformers' own config and model classes and saved with `save_pretrained` (one of
them sharded), with a byte-level BPE tokenizer that carries that family's special tokens.
For each: our logits equal transformers' on the same input (fp32, atol 1e-4), greedy
continuations are identical, and the FIM prompt is the family's documented layout,
compared as an exact string.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from completion import pipeline
from completion.settings import EngineSettings
from model.checkpoint import ModelDirError, load_model_dir
from model.config import ModelConfig
from model.generate import GenerationConfig, generate
from model.inference import prepare_for_inference
from model.tokenizer import PRETOKENIZE_PATTERN

transformers = pytest.importorskip("transformers")

QWEN = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
        "<|file_sep|>", "<|repo_name|>"]
DEEPSEEK = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>",
            "<｜fim▁begin｜>", "<｜fim▁end｜>"]
STARCODER = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
             "<file_sep>", "<repo_name>"]
SANTACODER = ["<|endoftext|>", "<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>"]
# CodeLlama: SentencePiece-style BPE; its sentinels are ordinary added tokens with a ▁.
CODELLAMA = ["</s>", "<s>", "<unk>"]
CODELLAMA_SENTINELS = ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]

PREFIX = "def total(items):\n    result = 0\n    for item in items:\n        "
SUFFIX = "\n    return result\n"
# The documented layouts (prefix-suffix-middle), spelled out character by character.
LAYOUTS = {
    "qwen": f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
    "deepseek": f"<｜begin▁of▁sentence｜><｜fim▁begin｜>{PREFIX}<｜fim▁hole｜>{SUFFIX}"
                "<｜fim▁end｜>",
    "starcoder": f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>",
    "santacoder": f"<fim-prefix>{PREFIX}<fim-suffix>{SUFFIX}<fim-middle>",
    # facebookresearch/codellama: "<PRE> {pre} <SUF>{suf} <MID>" after BOS; the space
    # after <PRE> is SentencePiece's dummy space, the others the ▁ of the sentinels.
    "codellama": f"<s> <PRE> {PREFIX} <SUF>{SUFFIX} <MID>",
}
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=256)


def family_tokenizer(texts: list[str], specials: list[str]) -> HFTokenizer:
    """A byte-level BPE like ours, whose special tokens are a family's."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return hf


def sentencepiece_tokenizer(texts: list[str]) -> HFTokenizer:
    """A tokenizer.json as Llama 2 / CodeLlama ship it: BPE over `▁`-for-space text with
    a dummy `▁` prepended (normalizer), `<0xNN>` byte pieces for characters the vocabulary
    lacks (byte_fallback), a decoder that undoes both; CodeLlama's four sentinels added."""
    hf = HFTokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    hf.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=60,
        show_progress=False))
    data = json.loads(hf.to_str())
    vocab = data["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    data["model"]["byte_fallback"] = True
    data["pre_tokenizer"] = None
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    hf = HFTokenizer.from_str(json.dumps(data))
    # As in CodeLlama's tokenizer.json: added, not normalized (so no second ▁).
    hf.add_tokens([AddedToken(t, normalized=False) for t in CODELLAMA_SENTINELS])
    return hf


def llama(**extra):
    return transformers.LlamaConfig(num_key_value_heads=2, **SMALL, **extra)


# family id -> (config factory, special tokens, FIM family, save_pretrained shard size)
CASES = {
    "llama-biases-head_dim": (lambda: llama(attention_bias=True, mlp_bias=True, head_dim=24),
                              DEEPSEEK, "deepseek", None),
    "llama-rope-linear": (lambda: llama(rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}), DEEPSEEK, "deepseek",
        None),
    "llama-rope-dynamic": (lambda: llama(rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}), DEEPSEEK, "deepseek",
        None),
    "llama-rope-llama3": (lambda: llama(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}), STARCODER,
        "starcoder", None),
    "llama-rope-yarn": (lambda: llama(rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 64}), QWEN, "qwen", None),
    "qwen2": (lambda: transformers.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True,
                                               **SMALL), QWEN, "qwen", "40KB"),
    "mistral": (lambda: transformers.MistralConfig(num_key_value_heads=1, sliding_window=128,
                                                   **SMALL), STARCODER, "starcoder", None),
    "starcoder2": (lambda: transformers.Starcoder2Config(
        num_key_value_heads=2, use_bias=True, hidden_act="gelu_pytorch_tanh", **SMALL),
        STARCODER, "starcoder", None),
    "gpt_bigcode-mqa": (lambda: transformers.GPTBigCodeConfig(
        n_embd=64, n_layer=2, n_head=4, n_positions=256, n_inner=96, multi_query=True),
        SANTACODER, "santacoder", None),
    "codellama-sentencepiece": (lambda: llama(rope_theta=1e6), CODELLAMA, "codellama", None),
    "gpt_bigcode-mha": (lambda: transformers.GPTBigCodeConfig(
        n_embd=64, n_layer=2, n_head=4, n_positions=256, multi_query=False),
        STARCODER, "starcoder", None),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def family_dir(request, tmp_path_factory, corpus):
    """A saved tiny checkpoint of one family, and transformers' model of it."""
    make_config, specials, fim, shard = CASES[request.param]
    hf_tok = sentencepiece_tokenizer(corpus[:200]) if fim == "codellama" else \
        family_tokenizer(corpus[:200], specials)
    config = make_config()
    config.vocab_size = -(-hf_tok.get_vocab_size() // 64) * 64
    config.eos_token_id = hf_tok.token_to_id(specials[1] if fim == "deepseek" else specials[0])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():                     # biases start at zero: make them matter
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(std=0.02)
    d = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(str(d), **({"max_shard_size": shard} if shard else {}))
    hf_tok.save(str(d / "tokenizer.json"))
    return request.param, d, model, fim


def test_logits_and_greedy_tokens_equal_transformers(family_dir):
    name, d, hf_model, _ = family_dir
    if CASES[name][3]:          # saved in shards: each is read, lazily, one after another
        index = json.loads((d / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
        assert not (d / "model.safetensors").exists()
    lm = load_model_dir(d, device="cpu", dtype="float32")
    ids = lm.tokenizer.encode(PREFIX * 2)[:100]
    served = copy.deepcopy(lm.model)
    prepare_for_inference(served)       # as the server runs it: fused, its head measured
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits
        for model in (lm.model, served):
            torch.testing.assert_close(model(torch.tensor([ids])), theirs, atol=1e-4,
                                       rtol=1e-4)
    # Greedy continuations, ours with the KV cache against theirs recomputed each step.
    got = [generate(model, lm.tokenizer, ids, GenerationConfig(max_new_tokens=12,
                                                               ignore_eos=True))
           for model in (lm.model, served)]
    want = list(ids)
    # As ours: never a padding row of the embedding nor a special token (ignore_eos).
    banned = [*lm.tokenizer.special_ids, *range(lm.tokenizer.vocab_size,
                                                lm.config.vocab_size)]
    with torch.no_grad():
        for _ in range(12):
            logits = hf_model(torch.tensor([want])).logits[0, -1]
            logits[banned] = float("-inf")
            want.append(int(logits.argmax()))
    for g in got:
        assert g.candidates[0].token_ids == want[len(ids):], name


def spelled(tok, ids: list[int]) -> str:
    """Prompt ids as text, special tokens by name (a SentencePiece ▁ as the space it is):
    transformers' own decode adds spaces around added tokens, so it cannot be the judge."""
    def name(i: int) -> str:
        n = tok.hf.id_to_token(i)
        return n.replace("▁", " ") if tok.sentencepiece else n
    return "".join(name(i) if i in tok.special_ids else tok.token_bytes(i).decode("utf-8")
                   for i in ids)


def test_fim_prompt_is_the_familys_documented_layout(family_dir):
    _, d, _, fim = family_dir
    lm = load_model_dir(d, device="cpu", dtype="float32")
    p = pipeline.prepare(lm, PREFIX, SUFFIX, EngineSettings(context_tokens=200, max_tokens=8))
    assert spelled(lm.tokenizer, p.ids) + p.healed.decode("utf-8") == LAYOUTS[fim]
    assert lm.meta.fim_order == "psm" and lm.context == min(lm.config.max_position_embeddings,
                                                            2048)


def test_sliding_window_caps_the_context_and_configs_read_as_their_family():
    mistral = ModelConfig.from_hf_dict(transformers.MistralConfig(
        sliding_window=128, num_key_value_heads=2, **SMALL).to_dict())
    assert mistral.max_position_embeddings == 128 and mistral.model_type == "mistral"
    qwen = ModelConfig.from_hf_dict(transformers.Qwen2Config(
        sliding_window=64, use_sliding_window=False, num_key_value_heads=2, **SMALL).to_dict())
    assert qwen.max_position_embeddings == 256 and qwen.attention_bias \
        and not qwen.attention_out_bias
    big = ModelConfig.from_hf_dict(transformers.GPTBigCodeConfig(
        n_embd=64, n_layer=2, n_head=4).to_dict())
    assert big.num_key_value_heads == 1 and big.learned_positions and big.layer_norm
    # A config that omits tie_word_embeddings gets transformers' default for its family.
    for config, tied in ((transformers.Starcoder2Config(num_key_value_heads=2, **SMALL), True),
                         (transformers.Qwen2Config(num_key_value_heads=2, **SMALL), False),
                         (transformers.LlamaConfig(num_key_value_heads=2, **SMALL), False)):
        d = config.to_dict()
        assert d["tie_word_embeddings"] == tied            # what transformers itself does
        del d["tie_word_embeddings"]
        assert ModelConfig.from_hf_dict(d).tie_word_embeddings == tied, config.model_type


def test_unsupported_architectures_and_tokenizers_are_one_sentence(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported architecture.*supported: LlamaForCausalLM"):
        ModelConfig.from_hf_dict({"architectures": ["GPTNeoXForCausalLM"],
                                  "model_type": "gpt_neox"})
    with pytest.raises(ValueError, match="rope_scaling type 'longrope' is not supported"):
        ModelConfig.from_hf_dict(llama(rope_parameters={
            "rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0],
            "long_factor": [1.0]}).to_dict() | {"rope_parameters": {"rope_type": "longrope"}})
    # A tokenizer with no known FIM tokens and no codecomplete.json to name them.
    d = tmp_path / "m"
    transformers.LlamaForCausalLM(llama(vocab_size=512)).save_pretrained(str(d))
    family_tokenizer(["def f(x):\n    return x\n"] * 20, ["<s>", "</s>"]).save(
        str(d / "tokenizer.json"))
    with pytest.raises(ModelDirError, match="FIM tokens of none of the families"):
        load_model_dir(d, device="cpu")


async def test_the_server_answers_inline_and_regular_completions(family_dir):
    from lsprotocol import types

    from tests.test_server_lsp import inline, open_doc, start, stop
    _, d, _, _ = family_dir
    client, _ = await start(d, {"max_tokens": 6})
    try:
        uri = "file:///t/total.py"
        text = PREFIX
        open_doc(client, uri, text + SUFFIX)
        result = await inline(client, uri, text)
        assert isinstance(result.items, (list, tuple))
        lines = text.split("\n")
        regular = await client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(line=len(lines) - 1, character=len(lines[-1]))))
        assert isinstance(regular.items, (list, tuple))
        # Random weights write noise, but the project memory is the same for every
        # family: a line the document repeats is what the server suggests.
        line = "total = compute_total(items, limit)"
        repeated = "".join(f"def f{i}(items, limit):\n    {line}\n\n" for i in range(4))
        body = repeated + "def f9(items, limit):\n    "
        open_doc(client, "file:///t/repeated.py", body)
        items = (await inline(client, "file:///t/repeated.py", body)).items
        assert items and line.startswith(items[0].insert_text.strip()[:8]), items
        status = await client.protocol.send_request_async("codecomplete/status", {})
        assert status.requests == 3 and str(d) in status.model
        assert not [m for m in client.messages if m.type == types.MessageType.Error]
    finally:
        await stop(client)


@pytest.fixture(scope="module")
def sentencepiece(corpus):
    from model.tokenizer import FIM_FAMILIES, Tokenizer
    return Tokenizer(sentencepiece_tokenizer(corpus[:200]), FIM_FAMILIES["codellama"])


@pytest.mark.parametrize("text", [
    "def f(x):\n    return x\n", "  two leading spaces", " one", "", " ", "\n\n\t",
    "café = 'naïve' 🙂\n", "x  =  1   # wide"])
def test_sentencepiece_tokens_decode_to_exactly_the_text_encoded(sentencepiece, text):
    tok = sentencepiece
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.hf.decode(tok.encode_with_dummy_space(text)) == text       # theirs agrees
    # Pieces encoded apart join without the dummy space each encode would otherwise add.
    assert tok.decode(tok.encode("a = ") + ids + tok.encode(" b")) == f"a = {text} b"


def test_sentencepiece_byte_fallback_and_healing(sentencepiece):
    from model.healing import heal_tail

    tok = sentencepiece
    # U+2581 itself is a space to SentencePiece (and to its own library): the one text
    # that does not come back as it was.
    lower = "\u2581 = 1"
    assert tok.decode(tok.encode(lower)) == "  = 1" == \
        tok.hf.decode(tok.encode_with_dummy_space(lower))
    emoji = tok.encode("🙂")
    assert [tok.hf.id_to_token(i) for i in emoji] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    assert tok.hf.decode(tok.encode_with_dummy_space("x 🙂")) == "x 🙂"   # as theirs
    text = "class Node:\n    def get_value(self):\n        return self.va"
    kept, healed = heal_tail(tok, tok.encode(text))
    assert healed and (tok.decode(kept).encode() + healed).decode() == text
    assert tok.tokens_starting_with(healed)


def test_codellama_prompt_ids_are_its_reference_implementations(sentencepiece):
    """facebookresearch/codellama's infilling_prompt_tokens: [bos, <PRE>] + encode(pre)
    (with the dummy space) + [<SUF>] + encode_infilling(suf) (without) + [<MID>]; and
    suffix first: [bos, <PRE>, <SUF>] + encode_infilling(suf) + [<MID>] + encode(pre)."""
    from model.tokenizer import PSM, SPM, fim_layout

    tok = sentencepiece
    pre, suf = tok.encode(PREFIX), tok.encode(SUFFIX)
    with_dummy = tok.hf.encode(PREFIX, add_special_tokens=False).ids
    assert with_dummy != pre
    ids = {t: tok.hf.token_to_id(t) for t in ["<s>", *CODELLAMA_SENTINELS]}
    assert fim_layout(tok, pre, suf, PSM) == [
        ids["<s>"], ids["▁<PRE>"], *with_dummy, ids["▁<SUF>"], *suf, ids["▁<MID>"]]
    assert fim_layout(tok, pre, suf, SPM) == [
        ids["<s>"], ids["▁<PRE>"], ids["▁<SUF>"], *suf, ids["▁<MID>"], *with_dummy]
    assert tok.eot_id == ids["▁<EOT>"] and tok.eot_id in tok.special_ids


def test_the_project_memory_blends_into_every_family(family_dir):
    """Every family goes through the same mixer: over its own vocabulary (padding rows
    included) the blend is a distribution, a line the document repeats is what greedy
    decoding then writes, and drafts verified in one pass give greedy's own tokens."""
    from completion.cache_lm import Counts, DocumentCounts, Lookup, Mixer

    name, d, _, _ = family_dir
    lm = load_model_dir(d, device="cpu", dtype="float32")
    tok = lm.tokenizer
    line = "total = compute_total(items, limit)"
    doc = "".join(f"def f{i}(items, limit):\n    {line}\n\n" for i in range(4))
    prefix = doc + "def f9(items, limit):\n    "
    ids = tok.encode(prefix)[-(lm.context - 24):]            # within the smallest context
    memory = DocumentCounts().counts(tok, prefix, "\n")
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids]))[:, -1].float()
    blended = Mixer([memory], ids)(logits, [[]])
    assert blended.shape == logits.shape and blended.exp().sum().item() == pytest.approx(1, 1e-5)
    outs = []
    for drafts in (False, True):
        cfg = GenerationConfig(max_new_tokens=16, stop=("\n",), drafts=drafts)
        outs.append(generate(lm.model, tok, ids, cfg, mixer=Mixer([memory], ids)))
    assert outs[0].candidates[0].token_ids == outs[1].candidates[0].token_ids, name
    assert outs[1].timings["forward_passes"] < len(outs[1].candidates[0].token_ids), name
    # (SentencePiece writes the space before `total` itself: the prompt was not healed)
    text = outs[0].candidates[0].text.strip()
    assert text and line.startswith(text[:8]), (name, text)
    plain = Lookup([(Counts([[1, 2, 3]]), 1)])                 # a memory that never matches
    assert torch.equal(Mixer([plain], ids)(logits, [[]]), torch.log_softmax(logits, -1))
