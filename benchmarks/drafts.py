"""What the project memory's drafts save: multi-line suggestions (new function bodies) in
held-out files, greedy with the memory on, drafts verified in one pass against decoding
token by token, on the same cases.

    python -m benchmarks.drafts [--model DIR] [--data data/local-16384] [--cases 60]

Each case is a top-level `def` of a held-out file whose body is removed (the body and
everything below it leave the document; the suffix is the rest of the file after the
function); the document's own text and the rest of its repository are the memory, as the
server counts them. Prints tokens per forward pass, decode ms per token both ways, whether
every text is the same (it must be), and the machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace

import torch

from benchmarks.machine import describe
from completion.cache_lm import DocumentCounts, Memory
from completion.pipeline import generate_candidates, memory_mixer, prepare
from completion.settings import EngineSettings
from model.checkpoint import load_model_dir
from model.decode_step import compile_by_default, compile_decoding
from model.generate import DRAFT_PASS
from model.inference import int8_by_default, prepare_for_inference
from model.paths import default_model_dir
from training.data import held_out_repos
from training.evaluate import body_sites, repo_memory


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(default_model_dir()))
    ap.add_argument("--data", default="data/local-16384")
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    lm = load_model_dir(args.model, device="cpu")
    # as the server runs it here: int8 and the compiled steps (a draft's check included)
    # where it would use them, since what a check costs against a step decides the gain
    int8 = int8_by_default(lm.device)
    prepare_for_inference(lm.model, int8=int8)
    served = "int8" if int8 else "float"
    if compile_by_default(lm.device):
        step = compile_decoding(lm.model, lm.context, verify=DRAFT_PASS)
        served += ", compiled steps" if step.ready else f", eager ({step.failed})"
    tok = lm.tokenizer
    repos = held_out_repos(args.data)
    rng = random.Random(args.seed)
    sites = [(repo, path, prefix, suffix) for repo in sorted(repos) if len(repos[repo]) >= 2
             for path in sorted(repos[repo])
             for prefix, suffix in body_sites([repos[repo][path]])]
    cases = sorted(rng.sample(sites, min(args.cases, len(sites))))
    settings = EngineSettings(max_tokens=96)
    memories: dict[str, Memory] = {}
    rows = {False: [], True: []}
    same = 0
    for repo, path, prefix, suffix in cases:
        if repo not in memories:
            memories.clear()
            memories[repo] = repo_memory(tok, repos[repo])
        workspace = memories[repo].counter(exclude=path)
        p = prepare(lm, prefix, suffix, settings)
        texts = []
        for drafts in (False, True):
            q = replace(p, config=replace(p.config, drafts=drafts))
            mixer = memory_mixer(lm, q, DocumentCounts(), workspace, settings)
            cache = lm.model.new_cache(1, lm.context)
            t0 = time.perf_counter()
            with torch.inference_mode():
                r = generate_candidates(lm, q, cache, mixer=mixer)
            seconds = time.perf_counter() - t0
            n = len(r.candidates[0].token_ids)
            passes = r.timings.get("forward_passes", max(0, n - 1))
            rows[drafts].append((n, passes, r.decode_seconds, seconds))
            texts.append(r.candidates[0].text)
        same += texts[0] == texts[1]
    print(f"drafts, {len(cases)} function bodies from held-out packages, greedy with the "
          f"project memory, {args.model} ({served}); {describe()}")
    for drafts, name in ((False, "token by token"), (True, "drafts verified")):
        rs = rows[drafts]
        tokens = sum(r[0] for r in rs)
        passes = sum(r[1] for r in rs)
        print(f"{name:<16} {tokens} tokens in {passes} decode passes "
              f"({tokens / max(1, passes):.2f} tokens/pass), decode "
              f"{1000 * sum(r[2] for r in rs) / max(1, tokens):.2f} ms/token, request "
              f"p50 {1000 * statistics.median(r[3] for r in rs):.0f} ms")
    print(f"same text: {same} of {len(cases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
