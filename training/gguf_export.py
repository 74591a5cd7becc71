"""Export one of our model directories as a GGUF file that llama.cpp runs.

    python -m training.gguf_export --model model/default --out default.gguf
    python -m training.gguf_export --measure data/local-16384   # the tokenization gap

Our models are Llama-architecture decoders with a byte-level BPE tokenizer, which is what
llama.cpp's `llama` architecture and `gpt2` tokenizer model hold: weights keep their dtype
(bf16 here), q/k rows are permuted to llama.cpp's rotary layout (as its own converter
does), and the FIM tokens, the end-of-text token and the file separator are recorded so
that its infill endpoint and llama.vscode find them.

Tokenization differs in one respect llama.cpp cannot express: it splits text with one of
its built-in pre-tokenizers, chosen by name, and none is ours (we keep `foo_bar` and a
newline with the next line's indentation together). The file names `starcoder` (digits
split one by one, as ours), so text tokenized by llama.cpp is cut more finely than ours.
`python -m training.gguf_export --measure` reports how much that costs on held-out code
(docs/models.md); fed our token ids, llama.cpp's greedy tokens match ours.
Needs the `gguf` package (`pip install gguf`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import LoadedModel, ModelDirError, load_model_dir
from model.families import read_tensors, weight_files

PRE_TOKENIZER = "starcoder"
# llama.cpp's regexes for that name (llama-vocab.cpp), applied one after the other.
LLAMA_CPP_SPLITS = (r"\p{N}",
                    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)")


def permute_for_rope(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, per head."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _array(t: torch.Tensor) -> tuple[np.ndarray, object]:
    """A tensor as the numpy array and GGUF type the writer takes (bf16 as raw uint16)."""
    import gguf

    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy(), gguf.GGMLQuantizationType.BF16
    if t.dtype == torch.float16:
        return t.numpy(), gguf.GGMLQuantizationType.F16
    return t.float().numpy(), gguf.GGMLQuantizationType.F32


def stored_dtype(model_dir: Path) -> torch.dtype:
    """The float dtype the directory's weights were saved in (its first float tensor's):
    the file keeps it, whatever this machine would compute in."""
    for _, t, _ in read_tensors(weight_files(model_dir)):
        if t.is_floating_point():
            return t.dtype
    raise ModelDirError(f"{model_dir} holds no floating-point weights.")


def export_gguf(model_dir: Path, out: Path) -> Path:
    """Write `out` (a new file; refuses to overwrite) from the model directory."""
    import gguf

    if out.exists():
        raise FileExistsError(f"{out} already exists; give a new file name.")
    lm = load_model_dir(model_dir, device="cpu", dtype=stored_dtype(Path(model_dir)))
    c = lm.config
    if (c.model_type != "llama" or c.learned_positions or c.layer_norm or not c.gated_mlp
            or c.hidden_act != "silu" or c.attention_bias or c.attention_out_bias
            or c.mlp_bias or c.rope_scaling):
        raise ValueError(f"{model_dir} is not a plain Llama model; only those export to GGUF.")
    hf = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    if hf["model"]["type"] != "BPE" or hf.get("decoder", {}).get("type") != "ByteLevel":
        raise ValueError(f"{model_dir}'s tokenizer is not byte-level BPE.")
    tmp = out.with_name(out.name + ".tmp")
    try:
        w = gguf.GGUFWriter(str(tmp), "llama")
        _fill(w, lm, hf, Path(model_dir).name)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)       # never leave half a file behind
        raise
    return out


def _fill(w, lm: LoadedModel, hf: dict, name: str) -> None:
    """The writer's metadata (architecture, tokenizer, special ids) and tensors."""
    import gguf

    c, tok = lm.config, lm.tokenizer
    w.add_name(name)
    w.add_context_length(lm.context)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    # tokenizer: every id up to the model's vocabulary, specials as control tokens
    vocab = {i: s for s, i in hf["model"]["vocab"].items()}
    specials = {a["id"]: a["content"] for a in hf.get("added_tokens", [])}
    vocab.update(specials)
    tokens = [vocab.get(i, f"[PAD{i}]") for i in range(c.vocab_size)]
    types = [gguf.TokenType.CONTROL if i in specials else
             gguf.TokenType.UNUSED if i not in vocab else gguf.TokenType.NORMAL
             for i in range(c.vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in hf["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_TOKENIZER)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tok.eot_id)
    w.add_eot_token_id(tok.eot_id)
    w.add_bos_token_id(tok.eot_id)
    w.add_add_bos_token(False)
    keys = gguf.Keys.Tokenizer
    for key, tid in ((keys.FIM_PRE_ID, tok.fim_prefix_id), (keys.FIM_SUF_ID, tok.fim_suffix_id),
                     (keys.FIM_MID_ID, tok.fim_middle_id), (keys.FIM_PAD_ID, tok.fim_pad_id),
                     (keys.FIM_SEP_ID, tok.file_sep_id)):
        if tid is not None:
            w.add_uint32(key, tid)
    # weights
    m = lm.model
    names = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}
    if not c.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    layer_names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                   "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                   "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                   "post_attention_layernorm": "ffn_norm"}
    state = {m.hf_key(k): v for k, v in m.state_dict().items()}
    for key, value in state.items():
        name = names.get(key.removeprefix("model."))
        if name is None and key.startswith("model.layers."):
            i, rest = key.removeprefix("model.layers.").split(".", 1)
            part = rest.rsplit(".", 1)[0]
            if part in layer_names:
                name = f"blk.{i}.{layer_names[part]}.weight"
                if part == "self_attn.q_proj":
                    value = permute_for_rope(value, c.num_attention_heads)
                elif part == "self_attn.k_proj":
                    value = permute_for_rope(value, c.num_key_value_heads)
        if name is None:
            if key == "lm_head.weight" and c.tie_word_embeddings:
                continue
            raise ValueError(f"no GGUF name for weight {key}")
        if name.endswith("norm.weight"):
            value = value.float()        # llama.cpp keeps norms in f32
        array, kind = _array(value)
        w.add_tensor(name, array, raw_dtype=kind)


def llama_cpp_tokenizer(model_dir: Path):
    """Our tokenizer with llama.cpp's `starcoder` splitting in place of ours: how llama.cpp
    tokenizes text for the exported file (same vocabulary and merges)."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), "isolated") for r in LLAMA_CPP_SPLITS]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return tok


def measure(model_dir: Path, data: str, files: int = 40) -> dict:
    """On held-out files: how many llama.cpp tokenizes as we do, its tokens per byte
    against ours, and our model's bits/byte on each tokenization."""
    import random

    from training.evaluate import bits_per_byte, validation_texts

    lm = load_model_dir(model_dir, device="cpu", dtype="fp32")
    alt = llama_cpp_tokenizer(model_dir)

    def theirs(text: str) -> list[int]:
        return alt.encode(text, add_special_tokens=False).ids

    texts = validation_texts(data)
    texts = random.Random(0).sample(texts, min(files, len(texts)))
    ours = [lm.tokenizer.encode(t) for t in texts]
    alts = [theirs(t) for t in texts]
    return {"files": len(texts), "same_tokens": sum(a == b for a, b in zip(ours, alts,
                                                                             strict=True)),
            "tokens_ours": sum(map(len, ours)), "tokens_llama_cpp": sum(map(len, alts)),
            "bits_per_byte_ours": bits_per_byte(lm, texts),
            "bits_per_byte_llama_cpp": bits_per_byte(lm, texts, encode=theirs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("model/default"))
    ap.add_argument("--out", type=Path, default=None, help="the .gguf file to write")
    ap.add_argument("--measure", default=None, metavar="DATA",
                    help="instead: compare llama.cpp's tokenization with ours on DATA's "
                         "held-out files")
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.model, args.measure), indent=1))
        return 0
    if args.out is None:
        ap.error("--out is required (or --measure DATA)")
    try:
        export_gguf(args.model, args.out)
    except ImportError:
        print("error: the gguf package is needed: pip install gguf", file=sys.stderr)
        return 2
    except (ModelDirError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
