"""The model directory is a real Hugging Face Llama checkpoint: transformers agrees with us."""

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a dev dependency; always present in CI


def test_transformers_loads_our_directory_with_the_same_logits(tiny_model_dir, tiny):
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tiny_model_dir),
                                                       torch_dtype=torch.float32).eval()
    ids = torch.tensor([tiny.tokenizer.encode("def get_value(self):\n        return self.")])
    with torch.no_grad():
        ours = tiny.model(ids)
        theirs = hf(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_transformers_tokenizer_matches_ours(tiny_model_dir, tiny):
    tf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_model_dir /
                                                                 "tokenizer.json"))
    text = "for i in range(10):\n    print(i, 'héllo')\n"
    assert tf.encode(text, add_special_tokens=False) == tiny.tokenizer.encode(text)


def test_gguf_export_holds_the_weights_tokens_and_fim_ids(tiny_model_dir, tmp_path):
    """training/gguf_export.py: llama.cpp's names and shapes, q/k rows in its rotary order
    (undoing the permutation gives our weights back), the vocabulary and FIM token ids.
    (Fed the same token ids, llama.cpp's logits on the shipped model's file agree with
    ours; see docs/models.md. llama.cpp itself takes ~8 minutes to build, so CI reads the
    file with the gguf package.)"""
    import gguf
    import numpy as np
    import pytest

    from model.checkpoint import load_model_dir
    from training.gguf_export import export_gguf, permute_for_rope

    out = export_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    lm = load_model_dir(tiny_model_dir, device="cpu", dtype="fp32")
    c, tok = lm.config, lm.tokenizer
    r = gguf.GGUFReader(str(out))

    def field(name):
        f = r.fields[name]
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types[0] == gguf.GGUFValueType.STRING else value[0]

    assert field("general.architecture") == "llama"
    assert field("tokenizer.ggml.pre") == "starcoder"
    assert field("llama.block_count") == c.num_hidden_layers
    assert field("llama.attention.head_count_kv") == c.num_key_value_heads
    assert field("tokenizer.ggml.fim_pre_token_id") == tok.fim_prefix_id
    assert field("tokenizer.ggml.fim_mid_token_id") == tok.fim_middle_id
    assert field("tokenizer.ggml.eos_token_id") == tok.eot_id
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == 2 + 9 * c.num_hidden_layers        # tied: no output.weight

    def weight(name):
        t = tensors[name]
        data = np.asarray(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            data = torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16).float()
        else:
            data = torch.from_numpy(np.asarray(data, dtype=np.float32).copy())
        return data.reshape([int(d) for d in reversed(t.shape)])

    attn = lm.model.layers[1].self_attn
    k = weight("blk.1.attn_k.weight")
    assert not torch.equal(k, attn.k_proj.weight.to(k.dtype))          # permuted...
    inverse = k.reshape(c.num_key_value_heads, -1, 2, c.hidden_size).swapaxes(1, 2)
    torch.testing.assert_close(inverse.reshape(k.shape), attn.k_proj.weight, atol=1e-2,
                               rtol=1e-2)                               # ...and back
    torch.testing.assert_close(weight("blk.1.attn_q.weight"),
                               permute_for_rope(attn.q_proj.weight, c.num_attention_heads),
                               atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(weight("token_embd.weight"), lm.model.embed_tokens.weight,
                               atol=1e-2, rtol=1e-2)
    with pytest.raises(FileExistsError, match="already exists"):
        export_gguf(tiny_model_dir, out)
    # weights keep the dtype they were saved in, whatever this CPU computes in
    assert tensors["blk.1.attn_k.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    from model.checkpoint import ModelMeta, save_model_dir

    save_model_dir(tmp_path / "bf16", lm.model, tok, ModelMeta(context_size=1024),
                   dtype=torch.bfloat16)
    halved = gguf.GGUFReader(str(export_gguf(tmp_path / "bf16", tmp_path / "bf16.gguf")))
    kinds = {t.name: t.tensor_type for t in halved.tensors}
    assert kinds["blk.1.attn_k.weight"] == gguf.GGMLQuantizationType.BF16
    assert kinds["token_embd.weight"] == gguf.GGMLQuantizationType.BF16
