"""Tokenizer wrapper, the training of ours, and the one FIM prompt layout.

Ours is byte-level BPE, lossless by construction: every byte is in the base alphabet,
there is no normalizer, and special-token text inside user code is encoded as ordinary
text (so a file containing "<|endoftext|>" can neither end a prompt early nor fail to
round-trip). Other models' tokenizers are byte-level BPE too (GPT-2 style: Qwen, DeepSeek,
StarCoder) or SentencePiece-style BPE (Llama 2, CodeLlama: `▁` for a space, `<0x0A>` pieces
for bytes the vocabulary lacks, and a "dummy" space put before the text): both decode to
exact bytes here, and `encode` gives the tokens of exactly the text given, dummy space
removed, so that pieces of a prompt encoded apart join without stray spaces.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

EOT = "<|endoftext|>"
FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
FILE_SEP = "<file_sep>"
SPECIAL_TOKENS = [EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, FILE_SEP]

# Pre-tokenization for code: identifiers (with an optional leading space), single digits,
# punctuation runs, a newline run together with the indentation after it, other blanks.
PRETOKENIZE_PATTERN = (
    r" ?[\p{L}\p{M}_]+"
    r"| ?\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}_]+"
    r"|\s*\n[ \t]*"
    r"|\s+"
)

PSM = "psm"
SPM = "spm"


@dataclass(frozen=True)
class FimTokens:
    """Names of the special tokens a model uses for FIM (other models name them otherwise).
    `bos`, when set, starts every prompt (models whose tokenizer adds it, as DeepSeek's)."""

    prefix: str = FIM_PREFIX
    middle: str = FIM_MIDDLE
    suffix: str = FIM_SUFFIX
    pad: str | None = FIM_PAD
    eot: str = EOT
    file_sep: str | None = FILE_SEP
    bos: str | None = None
    prefix_space: bool = False     # the prefix is encoded with SentencePiece's dummy space,
    #                                as CodeLlama's infilling prompts are ("<PRE> {pre}")


# The FIM tokens of the model families the server loads, as their model cards document
# them (all in prefix-suffix-middle order). A model directory without codecomplete.json
# gets the first whose tokens its tokenizer has; codecomplete.json can name one ("fim":
# "qwen") or spell the tokens out.
FIM_FAMILIES: dict[str, FimTokens] = {
    "starcoder": FimTokens(),
    "qwen": FimTokens("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                      "<|endoftext|>", "<|file_sep|>"),
    "deepseek": FimTokens("<｜fim▁begin｜>", "<｜fim▁end｜>", "<｜fim▁hole｜>", None,
                          "<｜end▁of▁sentence｜>", None, bos="<｜begin▁of▁sentence｜>"),
    "santacoder": FimTokens("<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>",
                            "<|endoftext|>", None),
    "codellama": FimTokens("▁<PRE>", "▁<MID>", "▁<SUF>", None, "▁<EOT>", None, bos="<s>",
                           prefix_space=True),
}


def detect_fim(hf: HFTokenizer) -> FimTokens | None:
    """The FIM tokens of the first family in FIM_FAMILIES whose prefix, middle, suffix
    and end tokens the tokenizer has (optional ones it lacks are left out)."""
    def has(token: str | None) -> bool:
        return token is not None and hf.token_to_id(token) is not None

    for fim in FIM_FAMILIES.values():
        if all(has(t) for t in (fim.prefix, fim.middle, fim.suffix, fim.eot)):
            return FimTokens(fim.prefix, fim.middle, fim.suffix,
                             fim.pad if has(fim.pad) else None, fim.eot,
                             fim.file_sep if has(fim.file_sep) else None,
                             fim.bos if has(fim.bos) else None, fim.prefix_space)
    return None


def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 bytes→printable-unicode table used by ByteLevel."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class Tokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer` that knows our special tokens."""

    def __init__(self, hf: HFTokenizer, fim: FimTokens | None = None):
        self.hf = hf
        self.sentencepiece = is_sentencepiece_style(hf)
        self.hf.encode_special_tokens = True  # special-token text in code is just text
        self.fim = fim or FimTokens()
        missing = [t for t in (self.fim.prefix, self.fim.middle, self.fim.suffix, self.fim.eot)
                   if hf.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        self.eot_id = hf.token_to_id(self.fim.eot)
        self.fim_prefix_id = hf.token_to_id(self.fim.prefix)
        self.fim_middle_id = hf.token_to_id(self.fim.middle)
        self.fim_suffix_id = hf.token_to_id(self.fim.suffix)
        self.fim_pad_id = hf.token_to_id(self.fim.pad) if self.fim.pad else None
        self.file_sep_id = hf.token_to_id(self.fim.file_sep) if self.fim.file_sep else None
        self.bos_id = hf.token_to_id(self.fim.bos) if self.fim.bos else None
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.special_ids = frozenset(
            i for t, i in hf.get_vocab(with_added_tokens=True).items()
            if t in SPECIAL_TOKENS or t in (self.fim.prefix, self.fim.middle, self.fim.suffix,
                                            self.fim.eot, self.fim.bos)
        ) | frozenset(
            i for i, tok in hf.get_added_tokens_decoder().items() if tok.special
        )
        self._token_bytes: list[bytes] | None = None
        self._sorted: list[tuple[bytes, int]] | None = None
        self._by_bytes: dict[bytes, int] | None = None
        # SentencePiece-style tokenizers put a space before the text: its bytes, if so.
        self._dummy = b" " if self.sentencepiece and self._raw_bytes("\n").startswith(b" ") \
            else b""

    # --- loading and saving -------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, fim: FimTokens | None = None) -> Tokenizer:
        return cls(HFTokenizer.from_file(str(path)), fim)

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    def to_str(self) -> str:
        return self.hf.to_str()

    # --- text ↔ ids ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """The tokens of exactly `text` (no BOS, no dummy space)."""
        if self._dummy:
            return self._undummied(text)
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._dummy:
            return [self._undummied(t) for t in texts]
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def encode_with_dummy_space(self, text: str) -> list[int]:
        """SentencePiece's own encoding of `text`, with its dummy space (CodeLlama's
        prompts encode the prefix so); the same as `encode` for other tokenizers."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def _raw_bytes(self, text: str) -> bytes:
        return b"".join(self.token_bytes(i) for i in self.encode_with_dummy_space(text))

    def _undummied(self, text: str) -> list[int]:
        """Encode "\n" + text and drop the tokens of the dummy space and the newline; a
        newline merged with the text's first bytes (not in Llama's vocabularies) leaves
        those bytes as byte-fallback pieces. The newline keeps the text's own first
        space, if any, from being taken for the dummy one."""
        ids = self.hf.encode("\n" + text, add_special_tokens=False).ids
        lead = self._dummy + b"\n"
        taken = b""
        for k, i in enumerate(ids):
            if len(taken) >= len(lead):
                return ids[k:]
            taken += self.token_bytes(i)
            if len(taken) > len(lead):        # a token crossed the boundary
                return self._byte_pieces(taken[len(lead):]) + ids[k + 1:]
        return []

    def _byte_pieces(self, data: bytes) -> list[int]:
        out = []
        for b in data:
            i = self.hf.token_to_id(f"<0x{b:02X}>")
            if i is None:
                raise ValueError(f"tokenizer has no byte piece <0x{b:02X}>")
            out.append(i)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; special tokens are dropped, invalid UTF-8 becomes U+FFFD."""
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for (b"" for special and out-of-range ids)."""
        table = self._bytes_table()
        return table[token_id] if 0 <= token_id < len(table) else b""

    def _bytes_table(self) -> list[bytes]:
        if self._token_bytes is None:
            dec = _byte_decoder()
            table = [b""] * self.vocab_size
            for tok, i in self.hf.get_vocab(with_added_tokens=True).items():
                if i in self.special_ids or i >= self.vocab_size:
                    continue
                if self.sentencepiece:
                    byte = BYTE_PIECE.fullmatch(tok)
                    table[i] = bytes([int(byte.group(1), 16)]) if byte else \
                        tok.replace("▁", " ").encode("utf-8")
                elif all(c in dec for c in tok):
                    table[i] = bytes(dec[c] for c in tok)
                else:  # a non-special added token stored as plain text
                    table[i] = tok.encode("utf-8")
            self._token_bytes = table
        return self._token_bytes

    def tokens_starting_with(self, prefix: bytes) -> list[int]:
        """Ids of all tokens whose bytes start with `prefix` (used by token healing)."""
        if self._sorted is None:
            self._sorted = sorted((b, i) for i, b in enumerate(self._bytes_table()) if b)
        lo = bisect.bisect_left(self._sorted, (prefix, -1))
        out = []
        for b, i in self._sorted[lo:]:
            if not b.startswith(prefix):
                break
            out.append(i)
        return out

    def token_for_bytes(self, data: bytes) -> int | None:
        """The id of the token whose bytes are exactly `data`, if there is one."""
        if self._by_bytes is None:
            self._by_bytes = {b: i for i, b in enumerate(self._bytes_table()) if b}
        return self._by_bytes.get(data)

    def token_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.to_str().encode()).hexdigest()


BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def is_sentencepiece_style(hf: HFTokenizer) -> bool:
    """Tokens with ▁ for spaces and <0xNN> byte-fallback pieces instead of GPT-2 bytes."""
    return bool(getattr(hf.model, "byte_fallback", False)) \
        or hf.token_to_id("<0x0A>") is not None


def fim_layout(tok: Tokenizer, prefix_ids: list[int], suffix_ids: list[int],
               order: str = PSM, middle_ids: list[int] | None = None) -> list[int]:
    """The one fill-in-the-middle layout, used by training, evaluation and serving.

    PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> [middle]
    SPM: <fim_prefix> <fim_suffix> suffix <fim_middle> prefix [middle]
    In SPM the prefix comes last and runs straight into the middle, so a prompt whose prefix
    grows as the user types keeps its KV cache. Training appends middle + <|endoftext|>.
    The token names are the model's (FimTokens: <|fim_prefix|> for Qwen, <｜fim▁begin｜>
    for DeepSeek, ...), and a model that starts prompts with a BOS token gets it first.
    CodeLlama's prefix is encoded with SentencePiece's dummy space, as its own infilling
    code does ("<PRE> {prefix} <SUF>{suffix} <MID>", the spaces being the dummy one and
    the `▁` of its sentinels).
    """
    middle_ids = middle_ids or []
    bos = [tok.bos_id] if tok.bos_id is not None else []
    if tok.fim.prefix_space and prefix_ids:
        prefix_ids = tok.encode_with_dummy_space(tok.decode(prefix_ids))
    if order == PSM:
        return ([*bos, tok.fim_prefix_id, *prefix_ids, tok.fim_suffix_id, *suffix_ids,
                 tok.fim_middle_id, *middle_ids])
    if order == SPM:
        return ([*bos, tok.fim_prefix_id, tok.fim_suffix_id, *suffix_ids, tok.fim_middle_id,
                 *prefix_ids, *middle_ids])
    raise ValueError(f"unknown FIM order {order!r}; expected 'psm' or 'spm'")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192,
                    min_frequency: int = 2, show_progress: bool = False) -> Tokenizer:
    """Train the byte-level BPE on an iterator of documents."""
    if vocab_size % 64:
        raise ValueError(f"vocab_size {vocab_size} must be a multiple of 64")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    hf.train_from_iterator(_as_iter(texts), trainer=trainer)
    return Tokenizer(hf)


def _as_iter(texts: Iterable[str]) -> Iterator[str]:
    yield from texts
