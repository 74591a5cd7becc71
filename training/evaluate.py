"""Measure a model directory on a prepared dataset's held-out repositories.

    python -m training.evaluate --model DIR --data data/NAME [--out eval.json]

Reports, on the validation split (whole repositories training never saw):
- bits per byte of the model (left-to-right, windows of the model's context) beside
  gzip -9 and xz -9 compressing each file on its own — the same files, the same bytes;
  and the model's apart on code and on prose (comment text, docstrings);
- line completion: cut a line at a random point, complete the rest of the line greedily
  as the server would (the lines below are the suffix); exact match and edit similarity;
- FIM bits per byte: the model's loss on middles cut at random characters from random
  windows of held-out files, given prefix and suffix in its own FIM order — the FIM
  counterpart of the left-to-right number, and far less noisy than exact match;
- bits per byte with the project memory (completion/cache_lm.py): held-out files read
  left to right with their own earlier text, then also the rest of their repository,
  counted and blended in as the server does;
- FIM single-line exact match: remove one whole line, give prefix and suffix;
- the share of sampled function bodies that parse with `ast`;
Every completion goes through completion/pipeline.py: the prompt (budget, cuts at line
boundaries, healing, FIM layout), the generation and the filters the server uses, with
the server's default settings (greedy, the rest of a line by beam search) except the
identifier re-ranking, a server-only extra (training does not import the server) that
benchmarks/line_completion.py adds on the same cases: its second row is what a user gets.
Cut points come from a seeded RNG, so two models are compared on the same cases.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import lzma
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from completion.cache_lm import ORDERS, WEIGHT, Counts, Lookup, Memory, Mixer
from completion.pipeline import SHOWN, complete, filter_texts, generated
from completion.postprocess import repetition, whole_statements
from completion.prompt import clean_text
from completion.settings import EngineSettings
from model.checkpoint import LoadedModel, ModelDirError, load_model_dir
from model.inference import prepare_for_inference
from model.tokenizer import Tokenizer, fim_layout
from training.data import DataError, held_out_repos, load_dataset
from training.prose import prose_flags
from training.train import NextTokenLoss


@dataclass
class EvalConfig:
    max_files: int = 200          # validation files used for bits per byte
    line_cases: int = 300
    fim_cases: int = 200
    fim_bpb_cases: int = 400      # middles for FIM bits per byte (two per file)
    # Bodies are sampled at temperature 0.8: 40 of them put the shipped model at 0.65 with
    # one seed and 160 at 0.37 with another (docs/default-model.md), so 160 by default.
    parse_cases: int = 160
    memory_files: int = 40        # held-out files scored with the project memory (0: off)
    context: int = EngineSettings.context_tokens   # prompt budget (the server's setting)
    seed: int = 1234


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(pred: str, target: str) -> float:
    """1 - normalised Levenshtein distance (CodeXGLUE's fuzz ratio, on 0..1)."""
    if not pred and not target:
        return 1.0
    return 1.0 - levenshtein(pred, target) / max(len(pred), len(target))


def validation_texts(data: str) -> list[str]:
    tok, _, splits = load_dataset(data)
    val = splits.get("val")
    if val is None or not val.docs:
        raise DataError(f"{data} has no validation split.")
    return [tok.decode(val.tokens[s][a:b].tolist()) for s, a, b in val.docs]


@torch.no_grad()
def token_nats(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The model's loss (nats) on each token of one file's `ids`, read left to right after
    <|endoftext|> (each file starts so in training) in non-overlapping context windows."""
    loss, ctx = NextTokenLoss(lm.model), lm.config.max_position_embeddings
    seq = torch.tensor([lm.tokenizer.eot_id, *ids], device=lm.device)
    parts = [loss(seq[start:start + ctx + 1][None], reduction="none")
             for start in range(0, len(seq) - 1, ctx)]
    return torch.cat(parts) if parts else torch.zeros(0)


def bits_per_byte(lm: LoadedModel, texts: list[str],
                  encode: Callable[[str], list[int]] | None = None) -> float:
    """Left-to-right bits per byte over whole files (`token_nats`). `encode` (default: the
    model's tokenizer) measures the model on another tokenization of the same text."""
    encode = encode or lm.tokenizer.encode
    nats = sum(token_nats(lm, encode(text)).sum().item() for text in texts)
    return nats / math.log(2) / max(1, sum(len(text.encode("utf-8")) for text in texts))


def code_and_prose_bits(lm: LoadedModel, texts: list[str]) -> dict[str, float]:
    """Bits per byte of all of `texts`, and apart of their code and of their prose (comment
    text and docstrings, training/prose.py): what a training prose weight trades."""
    tok = lm.tokenizer
    nats = {True: 0.0, False: 0.0}
    nbytes = {True: 0, False: 0}
    for text in texts:
        ids = tok.encode(text)
        flags, _ = prose_flags(tok, ids)
        for t, flag, n in zip(ids, flags, token_nats(lm, ids).tolist(), strict=True):
            nats[flag] += n
            nbytes[flag] += len(tok.token_bytes(t))
    bits = {k: v / math.log(2) for k, v in nats.items()}
    return {"model": (bits[True] + bits[False]) / max(1, nbytes[True] + nbytes[False]),
            "code": bits[False] / max(1, nbytes[False]),
            "prose": bits[True] / max(1, nbytes[True]),
            "prose_share": nbytes[True] / max(1, nbytes[True] + nbytes[False])}


@torch.no_grad()
def fim_bits_per_byte(lm: LoadedModel, texts: list[str], n: int, rng: random.Random) -> dict:
    """Bits per byte of FIM middles, counting the <|endoftext|> that closes each middle
    (a completion must know where to stop). Each case: a window of 3/4 of the context from
    a random place in a file, two random character cuts in it, then prefix and suffix in
    the model's FIM order and the loss on the middle only."""
    tok, ctx = lm.tokenizer, lm.config.max_position_embeddings
    window = ctx * 3 // 4
    loss = NextTokenLoss(lm.model)
    nats, nbytes, cases = 0.0, 0, 0
    encoded = [tok.encode(text) for text in texts[:n]]     # each file once, however many cases
    for i in range(n):
        ids = encoded[i % len(encoded)]
        start = rng.randrange(max(1, len(ids) - window + 1))
        piece = tok.decode(ids[start:start + window])
        a, b = sorted(rng.randrange(len(piece) + 1) for _ in range(2))
        head = fim_layout(tok, tok.encode(piece[:a]), tok.encode(piece[b:]), lm.meta.fim_order)
        seq = [*head, *tok.encode(piece[a:b]), tok.eot_id]
        if len(seq) > ctx + 1:          # re-tokenising at the cuts made it too long
            continue
        per_token = loss(torch.tensor([seq], device=lm.device), reduction="none")
        nats += per_token[len(head) - 1:].sum().item()
        nbytes += len(piece[a:b].encode("utf-8"))
        cases += 1
    return {"model": nats / math.log(2) / max(1, nbytes), "cases": cases, "bytes": nbytes}


MEMORY_CHUNK = 32   # the document's own counts are recounted every this many tokens


def memory_files(repos: dict[str, dict[str, str]], n_files: int, rng: random.Random
                 ) -> list[tuple[str, str]]:
    """(repository, path) of up to `n_files` files of repositories with two files or more,
    in repository order."""
    files = [(repo, path) for repo in sorted(repos) if len(repos[repo]) >= 2
             for path in sorted(repos[repo])]
    return sorted(rng.sample(files, min(n_files, len(files))))


def repo_memory(tok: Tokenizer, files: dict[str, str]) -> Memory:
    """A repository's files counted as the server's workspace level counts them, in one
    base (no cap: the evaluation and benchmarks count whole held-out packages)."""
    memory = Memory(cap_tokens=1 << 40)
    for path, text in files.items():
        memory.set(path, tok.encode(clean_text(text)), refresh=False)
    memory.rebuild()
    return memory


def memory_positions(lm: LoadedModel, repos: dict[str, dict[str, str]],
                     picked: list[tuple[str, str]]):
    """Files (`memory_files`) read left to right as the project memory sees them: for
    each token, (the model's probability of it, the tokens before it, it, the workspace's
    counts (the rest of its repository), the document's counts (the file's own earlier
    text, recounted every MEMORY_CHUNK tokens))."""
    tok = lm.tokenizer
    memory, memory_repo = None, None
    for repo, path in picked:
        if repo != memory_repo:
            memory, memory_repo = repo_memory(tok, repos[repo]), repo
        ids = tok.encode(repos[repo][path])
        probs = torch.exp(-token_nats(lm, ids)).tolist()
        workspace = memory.counter(exclude=path)
        tail = max(ORDERS)
        for c0 in range(0, len(ids), MEMORY_CHUNK):
            document = Lookup([(Counts([ids[:c0]]), 1)])
            for i in range(c0, min(c0 + MEMORY_CHUNK, len(ids))):
                yield probs[i], ids[max(0, i - tail):i], ids[i], workspace, document


def memory_bits_per_byte(lm: LoadedModel, repos: dict[str, dict[str, str]], n_files: int,
                         rng: random.Random, weight: float = WEIGHT) -> dict[str, float]:
    """Bits per byte of held-out files by the model alone, with the project memory of the
    file's own earlier text (a lone file), and with the rest of its repository as well
    (completion/cache_lm.py's blend, `Mixer.blend_one`)."""
    tok = lm.tokenizer
    bits = {"model": 0.0, "document": 0.0, "workspace": 0.0}
    nbytes = matched = tokens = 0
    picked = memory_files(repos, n_files, rng)
    levels = None
    for p, history, target, workspace, document in memory_positions(lm, repos, picked):
        if levels != (workspace, document):        # new per file and per chunk only
            levels = (workspace, document)
            lone = Mixer([document], [], weight)
            both = Mixer([workspace, document], [], weight)
        bits["model"] -= math.log2(max(p, 1e-30))
        bits["document"] -= math.log2(max(lone.blend_one(p, history, target), 1e-30))
        blended = both.blend_one(p, history, target)
        bits["workspace"] -= math.log2(max(blended, 1e-30))
        matched += blended != p
        tokens += 1
        nbytes += len(tok.token_bytes(target))
    out = {k: v / max(1, nbytes) for k, v in bits.items()}
    return {**out, "drop_document": 1 - out["document"] / out["model"],
            "drop_workspace": 1 - out["workspace"] / out["model"],
            "matched_share": matched / max(1, tokens), "tokens": tokens, "files": len(picked),
            "weight": weight}


def compressor_bpb(texts: list[str]) -> dict[str, float]:
    raw = [t.encode("utf-8") for t in texts]
    total = sum(map(len, raw))
    return {"gzip": sum(len(gzip.compress(b, 9)) for b in raw) * 8 / total,
            "xz": sum(len(lzma.compress(b, preset=9)) for b in raw) * 8 / total}


def settings_for(cfg: EvalConfig, **changes) -> EngineSettings:
    """The server's default settings (greedy) without re-ranking, with the evaluation's
    prompt budget."""
    return EngineSettings(**{"temperature": 0.0, "context_tokens": cfg.context,
                             "rerank": False, **changes})


def line_cases(texts: list[str], n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """(prefix, rest of line, suffix) at random cut points inside non-blank lines, as an
    editor has them while the line is being typed: the lines below the cursor are the
    suffix (it starts with their newline), the rest of the line is still to come."""
    cases = []
    for _ in range(n * 20):
        if len(cases) >= n:
            break
        text = rng.choice(texts)
        lines = text.split("\n")
        i = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
        line = lines[i]
        body = line.strip()
        if len(body) < 4 or body.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        cut = rng.randrange(indent, len(line))
        target = line[cut:]
        if not target.strip():
            continue
        prefix = "\n".join(lines[:i]) + "\n" + line[:cut]
        cases.append((prefix, target, "".join("\n" + rest for rest in lines[i + 1:])))
    return cases


def fim_cases(texts: list[str], n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """(prefix, the removed line without its newline, suffix starting with newline)."""
    cases = []
    for _ in range(n * 20):
        if len(cases) >= n:
            break
        lines = rng.choice(texts).split("\n")
        if len(lines) < 3:
            continue
        i = rng.randrange(1, len(lines) - 1)
        if len(lines[i].strip()) < 4:
            continue
        indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
        prefix = "\n".join(lines[:i]) + "\n" + indent
        cases.append((prefix, lines[i][len(indent):], "\n" + "\n".join(lines[i + 1:])))
    return cases


def first_line(lm: LoadedModel, prefix: str, suffix: str, settings: EngineSettings) -> str:
    """The first line of what the server would show at this cursor (the shared prompt,
    generation and filters of completion/pipeline.py), "" when it would show nothing."""
    out = complete(lm, prefix, suffix, settings)
    return out[0].split("\n")[0] if out else ""


def run_line_completion(lm: LoadedModel, cases, cfg: EvalConfig) -> dict[str, float]:
    """Exact match and edit similarity of the first suggested line against the rest of
    the line (both stripped). Serves the line-completion and the FIM single-line cases:
    each is (prefix, target, suffix)."""
    em = es = 0.0
    settings = settings_for(cfg)
    for prefix, target, suffix in cases:
        pred = first_line(lm, prefix, suffix, settings)
        em += pred.strip() == target.strip()
        es += edit_similarity(pred.strip(), target.strip())
    n = max(1, len(cases))
    return {"exact_match": em / n, "edit_similarity": es / n, "cases": len(cases)}


def body_sites(texts: list[str]) -> list[tuple[str, str]]:
    """(prefix ending in the body's indentation, suffix after the body) for each
    top-level `def` with its header on one line: where a user starts a new function body."""
    sites = []
    for text in texts:
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if line.startswith("def ") and line.rstrip().endswith(":"):
                end = next((j for j in range(i + 1, len(lines)) if lines[j].strip()
                            and not lines[j].startswith((" ", "\t"))), len(lines))
                sites.append(("\n".join(lines[:i + 1]) + "\n    ",
                              "\n" + "\n".join(lines[end:])))
    return sites


def run_parse(lm: LoadedModel, texts: list[str], n: int, rng: random.Random,
              cfg: EvalConfig) -> dict[str, float]:
    """Sample function bodies (temperature 0.8) where a user starts a new body: the
    server's multi-line path (stops at the block's end, post-processed). A body counts
    when it parses as whole statements (`whole_statements.parses`, the cut's own test);
    a body the filters drop counts as not parsing.
    `parse_rate` is of the bodies as shown; `parse_rate_uncut` of the same samples
    through every filter but the whole-statements cut, which keeps only lines that
    parse: the model's own share, the one to compare across models. `loops` is the share
    of bodies shown with a line repeated in a row or a repeating unit of tokens (what
    the repetition filter did not cut)."""
    sites = body_sites(texts)
    rng.shuffle(sites)
    sites = sites[:n]
    ok = ok_uncut = loops = 0
    samples, looping_samples = [], []
    settings = settings_for(cfg, temperature=0.8, top_p=0.95, seed=cfg.seed, max_tokens=96)
    uncut_chain = [f for f in SHOWN if f is not whole_statements.apply]
    for prefix, suffix in sites:
        raw, ctx = generated(lm, prefix, suffix, settings)
        texts_shown, texts_uncut = (filter_texts(raw, ctx, chain)
                                    for chain in (SHOWN, uncut_chain))
        body, uncut = (out[0] if out else "" for out in (texts_shown, texts_uncut))
        looping = shows_loop("    " + body)
        loops += looping
        ok += whole_statements.parses(body, "    ")
        ok_uncut += whole_statements.parses(uncut, "    ")
        sample = {"prompt_tail": prefix[-120:], "completion": "    " + body[:400],
                  "uncut": "    " + uncut[:400]}
        if len(samples) < 12:
            samples.append(sample)
        if looping:
            looping_samples.append(sample)
    n_sites = max(1, len(sites))
    return {"parse_rate": ok / n_sites, "parse_rate_uncut": ok_uncut / n_sites,
            "loops": loops / n_sites, "cases": len(sites), "samples": samples,
            "looping_samples": looping_samples}


def shows_loop(body: str) -> bool:
    """Whether a suggestion as shown still loops: a non-blank line the same as the one
    before it, or a unit of tokens repeating (the repetition filter's own test)."""
    lines = body.split("\n")
    return (any(b.strip() and a == b for a, b in itertools.pairwise(lines))
            or repetition.loop_start(body) is not None)


def evaluate(model_dir: Path, data: str, cfg: EvalConfig | None = None, device="auto",
             log=print) -> dict:
    cfg = cfg or EvalConfig()
    lm = load_model_dir(model_dir, device=device, dtype="fp32" if device == "cpu" else "auto")
    prepare_for_inference(lm.model)                  # scored as the server runs it
    texts = validation_texts(data)
    rng = random.Random(cfg.seed)
    bpb_files = rng.sample(texts, min(cfg.max_files, len(texts)))
    t0 = time.time()
    result: dict = {"model": str(model_dir), "data": data,
                    "params": lm.config.num_parameters(), "device": str(lm.device)}
    result["bits_per_byte"] = {**code_and_prose_bits(lm, bpb_files),
                               **compressor_bpb(bpb_files), "files": len(bpb_files),
                               "bytes": sum(len(t.encode()) for t in bpb_files)}
    log(f"bits/byte done in {time.time() - t0:.0f}s")
    result["fim_bits_per_byte"] = fim_bits_per_byte(lm, bpb_files, cfg.fim_bpb_cases,
                                                    random.Random(cfg.seed + 4))
    if cfg.memory_files:
        try:
            repos = held_out_repos(data)
        except DataError as e:          # data prepared before repository names were kept
            log(f"no project-memory bits/byte: {e}")
        else:
            result["memory_bits_per_byte"] = memory_bits_per_byte(
                lm, repos, cfg.memory_files, random.Random(cfg.seed + 5))
    result["line_completion"] = run_line_completion(
        lm, line_cases(texts, cfg.line_cases, random.Random(cfg.seed + 1)), cfg)
    result["fim_single_line"] = run_line_completion(
        lm, fim_cases(texts, cfg.fim_cases, random.Random(cfg.seed + 2)), cfg)
    result["settings"] = asdict(settings_for(cfg))
    result["parse"] = run_parse(lm, texts, cfg.parse_cases, random.Random(cfg.seed + 3), cfg)
    result["seconds"] = time.time() - t0
    return result


def memory_row(r: dict) -> str:
    m = r.get("memory_bits_per_byte")
    if not m:
        return "-"
    return (f"{m['model']:.3f} / {m['document']:.3f} / {m['workspace']:.3f}  "
            f"(-{m['drop_document']:.0%} / -{m['drop_workspace']:.0%}, {m['files']} files)")


def format_table(r: dict) -> str:
    b, lc, fim, p = r["bits_per_byte"], r["line_completion"], r["fim_single_line"], r["parse"]
    fb = r.get("fim_bits_per_byte")     # absent from results saved before it existed
    fim_bpb = f"{fb['model']:.3f}  ({fb['cases']} middles)" if fb else "-"
    rows = [
        ("validation bits/byte (model)", f"{b['model']:.3f}"),
        ("  gzip -9 per file", f"{b['gzip']:.3f}"),
        ("  xz -9 per file", f"{b['xz']:.3f}"),
        ("  model on code / on prose", f"{b['code']:.3f} / {b['prose']:.3f}  "
         f"(prose {b['prose_share']:.0%} of the bytes)" if "code" in b else "-"),
        ("FIM middle bits/byte (model)", fim_bpb),
        ("with project memory: model / own file / + repository", memory_row(r)),
        ("line completion exact match", f"{lc['exact_match']:.3f}  ({lc['cases']} cases)"),
        ("line completion edit similarity", f"{lc['edit_similarity']:.3f}"),
        ("FIM single-line exact match", f"{fim['exact_match']:.3f}  ({fim['cases']} cases)"),
        ("FIM single-line edit similarity", f"{fim['edit_similarity']:.3f}"),
        ("sampled bodies that parse", f"{p['parse_rate']:.3f}  ({p['cases']} cases)"),
        ("  before the whole-statements cut", f"{p['parse_rate_uncut']:.3f}"
         if "parse_rate_uncut" in p else "-"),
        ("sampled bodies shown looping", f"{p.get('loops', float('nan')):.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    ap.add_argument("--device", default="auto")
    fields = ("max_files", "line_cases", "fim_cases", "fim_bpb_cases", "parse_cases",
              "memory_files", "context", "seed")
    for name in fields:
        ap.add_argument(f"--{name.replace('_', '-')}", type=int,
                        default=getattr(EvalConfig, name))
    args = ap.parse_args(argv)
    cfg = EvalConfig(**{name: getattr(args, name) for name in fields})
    try:
        r = evaluate(args.model, args.data, cfg, args.device,
                     log=lambda s: print(s, file=sys.stderr, flush=True))
    except (ModelDirError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(r))
    if args.out:
        args.out.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
