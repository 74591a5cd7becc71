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
