"""Shared fixtures: a tokenizer and a tiny model really trained here in seconds.

The corpus mixes standard-library modules (realistic Python) with small synthetic classes
whose attribute names repeat, so that the tiny model learns them well enough for token
healing and completion tests to be meaningful.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from model.checkpoint import ModelMeta, load_model_dir, save_model_dir
from model.config import ModelConfig
from model.tokenizer import Tokenizer, train_tokenizer
from training.standin import stdlib_texts, train_small

ATTRS = ["value", "count", "name", "total"]
CLASSES = ["Point", "Box", "Node", "Item", "Record", "Cell", "Entry", "Slot"]


def synthetic_classes(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cls, attr = rng.choice(CLASSES), rng.choice(ATTRS)
        out.append(
            f"class {cls}:\n"
            f"    def __init__(self, {attr}):\n"
            f"        self.{attr} = {attr}\n\n"
            f"    def get_{attr}(self):\n"
            f"        return self.{attr}\n"
        )
    return out


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return stdlib_texts(max_files=60, seed=1) + synthetic_classes(400)


@pytest.fixture(scope="session")
def tokenizer(corpus) -> Tokenizer:
    return train_tokenizer(corpus, vocab_size=1024)


TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer model trained ~20 s on synthetic classes (plus some stdlib) and saved."""
    texts = synthetic_classes(2000, seed=2) + stdlib_texts(max_files=20, seed=3)
    config = ModelConfig(vocab_size=1024, **TINY, eos_token_id=tokenizer.eot_id)
    model = train_small(tokenizer, texts, config, steps=250, seq_len=128, batch_size=16,
                        lr=1e-2, seed=0, fim_rate=0.5, log=lambda s: None)
    out = tmp_path_factory.mktemp("tiny") / "model"
    save_model_dir(out, model, tokenizer, ModelMeta(context_size=1024), dtype=torch.float32)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    return load_model_dir(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def native_kernels() -> None:
    """model/native.py's kernels, built here (once a session) and loaded; the tests that
    use them skip where they are not for this machine (`native.unsupported()`: not x86-64
    Linux, no AVX2, no C++ compiler), and fail where they are but do not build or load."""
    from model import native

    if native.unsupported() is not None:
        pytest.skip(f"the native kernels are not for this machine: {native.unsupported()}")
    why = native.load(build_if_missing=True)
    assert why is None, f"the native kernels did not build or load here: {why}"


@pytest.fixture
def random_model():
    """An untrained fp32 model with GQA, for exactness tests that need no training."""
    from model.transformer import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1024, **TINY)
    return Transformer(cfg).eval()


def write_package_tree(root: Path, packages: int = 6, files_per_package: int = 8,
                       seed: int = 0) -> Path:
    """Folders of real stdlib modules, one per 'package', for corpus/prepare tests."""
    texts = [t for t in stdlib_texts(max_files=packages * files_per_package, seed=seed)
             if len(t.encode()) <= 60_000]
    root.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        pkg = root / f"pkg{i % packages}"
        pkg.mkdir(exist_ok=True)
        (pkg / f"mod{i}.py").write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def small_corpus_db(tmp_path_factory) -> Path:
    """A SQLite corpus made by the real `local` source from six stdlib-module packages."""
    from scraper.local import crawl_local
    from scraper.store import CorpusStore

    base = tmp_path_factory.mktemp("corpus")
    tree = write_package_tree(base / "tree")
    db = base / "corpus.sqlite"
    with CorpusStore(db) as store:
        crawl_local(store, [tree], each_subdir=True)
    return db


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, small_corpus_db) -> Path:
    from training.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("data") / "small"
    prepare(small_corpus_db, out, PrepareConfig(vocab_size=1024, val_fraction=0.2),
            log=lambda s: None)
    return out
