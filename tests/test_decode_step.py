"""The compiled one-token decode step (model/decode_step.py): really compiled by inductor
here (g++), checked against the eager model it replaces."""

from __future__ import annotations

import copy

import pytest
import torch

from model.checkpoint import load_model_dir
from model.decode_step import DecodeStep, available, compile_decoding
from model.generate import DRAFT_PASS, GenerationConfig, generate
from model.inference import prepare_for_inference
from model.kv_cache import branch_room

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

TEXTS = ["def area(width, height):\n    return width * height\n\n\ndef perimeter(",
         "class Node:\n    def __init__(self, value):\n        self.value = value\n\n"
         "    def get_value(self):\n        return self."]


def served(model: torch.nn.Module, int8: bool = False, dynamic: bool = False
           ) -> torch.nn.Module:
    out = copy.deepcopy(model)
    prepare_for_inference(out, int8=int8, int8_activations=dynamic)
    return out


def teacher_forced(model, step: DecodeStep, ids: list[int], follow: list[int]
                   ) -> tuple[torch.Tensor, torch.Tensor, object, object]:
    """Logits of `follow` fed one token at a time after `ids`, eagerly and compiled."""
    eager_cache, fast_cache = model.new_cache(1, step.capacity), model.new_cache(1, step.capacity)
    eager, fast = [], []
    with torch.inference_mode():
        for cache in (eager_cache, fast_cache):
            model(torch.tensor([ids]), cache, last_only=True)
        for t in follow:
            x = torch.tensor([[t]])
            model.decode_step = None
            eager.append(model(x, eager_cache))
            model.decode_step = step
            got = step(x, fast_cache)
            assert got is not None                  # the compiled step took it
            fast.append(got)
    return torch.cat(eager, 1), torch.cat(fast, 1), eager_cache, fast_cache


def test_the_compiled_step_computes_the_eager_one(tiny):
    model = served(tiny.model)
    step = DecodeStep(model, tiny.context)
    step.compile()
    assert step.ready, step.failed
    ids = tiny.tokenizer.encode(TEXTS[1])
    eager, fast, ec, fc = teacher_forced(model, step, ids[:20], ids[20:])
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
    assert fc.length == ec.length == len(ids) and fc.tokens == ec.tokens == ids
    for layer in range(len(model.layers)):          # the same keys and values stored
        torch.testing.assert_close(fc.k[layer][:, :, :len(ids)], ec.k[layer][:, :, :len(ids)])
        torch.testing.assert_close(fc.v[layer][:, :, :len(ids)], ec.v[layer][:, :, :len(ids)])
    # greedy decoding writes the same tokens, with and without beams (beams stay eager)
    for text in TEXTS:
        for cut in range(16, len(text), 4):
            prompt = tiny.tokenizer.encode(text[:cut])
            for beams in (1, 3):
                cfg = GenerationConfig(max_new_tokens=12, beams=beams)
                model.decode_step = None
                want = generate(model, tiny.tokenizer, prompt, cfg).candidates[0].token_ids
                model.decode_step = step
                got = generate(model, tiny.tokenizer, prompt, cfg).candidates[0].token_ids
                assert got == want, (text[:cut], beams)


def test_the_compiled_steps_read_only_the_written_span_of_the_cache(tiny):
    """The graphs attend over the positions written so far rounded up to SPAN, not over
    the cache's whole capacity: NaN planted past that span changes nothing (attending
    over it, masked or not, would give NaN: 0 * NaN). One graph serves every span up to
    the cache's end without recompiling, and the very last position is the eager
    model's."""
    from model.decode_step import SPAN

    model = served(tiny.model)
    capacity = 4 * SPAN
    step = DecodeStep(model, capacity, verify=DRAFT_PASS)
    step.compile()
    assert step.ready, step.failed
    ids = (tiny.tokenizer.encode(TEXTS[0] + TEXTS[1]) * 8)[:capacity]
    eager_cache, fast_cache = model.new_cache(1, capacity), model.new_cache(1, capacity)
    with torch.inference_mode():
        for cache in (eager_cache, fast_cache):
            model.decode_step = None
            model(torch.tensor([ids[:5]]), cache)
        for k, v in zip(fast_cache.k, fast_cache.v, strict=True):
            k[:, :, SPAN:] = float("nan")
            v[:, :, SPAN:] = float("nan")
        draft = torch.tensor([ids[5:5 + DRAFT_PASS]])       # a draft's check: positions 5-13
        model.decode_step = None
        want = model(draft, eager_cache)
        model.decode_step = step
        got = step(draft, fast_cache)
        assert got is not None and step.checks == 1
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        for n in range(5 + DRAFT_PASS, capacity - 1):      # every span, one token a step
            if n == SPAN:                                  # past the first: real values
                for k, v in zip(fast_cache.k, fast_cache.v, strict=True):
                    k[:, :, SPAN:] = 0
                    v[:, :, SPAN:] = 0
            x = torch.tensor([[ids[n]]])
            model.decode_step = None
            want = model(x, eager_cache)
            model.decode_step = step
            got = step(x, fast_cache)
            assert got is not None, n
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        assert step.ready, step.failed                    # no recompile stopped it
        assert step(torch.tensor([[ids[-1]]]), fast_cache) is None     # the last: eager


def test_steps_alive_together_are_not_held_to_dynamos_recompile_limit(tiny):
    """Dynamo counts every DecodeStep's graph of `step` against one recompile limit per
    process (nothing tells instances apart by identity); the full suite once met it with
    8 steps not yet garbage-collected, and the ninth server of the process decoded
    eagerly. Here the limit is 2 and three steps, all kept, each compile."""
    model = served(tiny.model)
    steps = [DecodeStep(model, capacity) for capacity in (64, 96, 128)]
    with torch._dynamo.config.patch(recompile_limit=2):
        for step in steps:
            step.compile()
            assert step.ready, step.failed


def test_the_compiled_beam_step_computes_the_eager_one(tiny):
    """Beam rows over a branch of the prompt's cache: the same logits and own keys as the
    eager branch step, and beam search writes the same text with it."""
    model = served(tiny.model)
    step = DecodeStep(model, tiny.context, beams=3, room=branch_room(13))
    step.compile()
    assert step.ready and step._branch_fn is not None, step.failed
    ids = tiny.tokenizer.encode(TEXTS[0] + TEXTS[1] + TEXTS[0])
    assert len(ids) >= 50
    base = model.new_cache(1, tiny.context)
    follow = torch.tensor([ids[20:30], ids[30:40], ids[40:50]]).T      # 10 steps, 3 rows
    with torch.inference_mode():
        model(torch.tensor([ids[:20]]), base, last_only=True)
        eager_branch, fast_branch = base.branch(3, 13), base.branch(3, 13)
        eager, fast = [], []
        for t in follow:
            model.decode_step = None
            eager.append(model(t[:, None], eager_branch))
            fast.append(step(t[:, None], fast_branch))
            assert fast[-1] is not None
    torch.testing.assert_close(torch.cat(fast, 1), torch.cat(eager, 1), atol=1e-4, rtol=1e-4)
    assert fast_branch.length == eager_branch.length == 30
    torch.testing.assert_close(fast_branch.k[1][:, :, :10], eager_branch.k[1][:, :, :10])
    before = step.steps
    for text in TEXTS:
        for cut in range(16, len(text), 4):
            prompt = tiny.tokenizer.encode(text[:cut])
            cfg = GenerationConfig(max_new_tokens=12, beams=3)
            model.decode_step = None
            want = generate(model, tiny.tokenizer, prompt, cfg).candidates[0].token_ids
            model.decode_step = step
            got = generate(model, tiny.tokenizer, prompt, cfg).candidates[0].token_ids
            assert got == want, text[:cut]
    assert step.steps > before                      # beam steps went through it


def test_the_compiled_draft_check_computes_the_eager_one(tiny):
    """A draft's tokens checked in one compiled pass (padded to the graph's width): the
    logits at every position and the keys stored are the eager pass's; greedy decoding
    with the project memory's drafts writes the same tokens through it."""
    from completion.cache_lm import Counts, Lookup, Mixer

    model = served(tiny.model)
    step = DecodeStep(model, tiny.context, verify=DRAFT_PASS)
    step.compile()
    assert step.ready and step._verify_fn is not None, step.failed
    ids = tiny.tokenizer.encode(TEXTS[0] + TEXTS[1] + TEXTS[0])
    eager_cache, fast_cache = model.new_cache(1, tiny.context), model.new_cache(1, tiny.context)
    eager, fast = [], []
    at = 20
    with torch.inference_mode():
        for cache in (eager_cache, fast_cache):
            model(torch.tensor([ids[:at]]), cache, last_only=True)
        for n in (DRAFT_PASS, 3, 1, 2, DRAFT_PASS - 1, 5):
            x = torch.tensor([ids[at:at + n]])
            model.decode_step = None
            eager.append(model(x, eager_cache))
            got = step(x, fast_cache)
            assert got is not None and got.shape == eager[-1].shape
            fast.append(got)
            at += n
    torch.testing.assert_close(torch.cat(fast, 1), torch.cat(eager, 1), atol=1e-4, rtol=1e-4)
    assert fast_cache.tokens == eager_cache.tokens == ids[:at]
    for layer in range(len(model.layers)):
        torch.testing.assert_close(fast_cache.k[layer][:, :, :at], eager_cache.k[layer][:, :, :at])
        torch.testing.assert_close(fast_cache.v[layer][:, :, :at], eager_cache.v[layer][:, :, :at])
    with torch.inference_mode():                    # wider than the graph: eager
        assert step(torch.tensor([ids[:DRAFT_PASS + 1]]), fast_cache) is None
    before = step.checks
    repeated = tiny.tokenizer.encode(TEXTS[1] * 3)
    for cut in range(30, len(repeated) - 10, 7):
        prompt = repeated[:cut]
        memory = Lookup([(Counts([prompt, repeated[cut + 10:]]), 1)])
        cfg = GenerationConfig(max_new_tokens=16)
        model.decode_step = None
        want = generate(model, tiny.tokenizer, prompt, cfg, mixer=Mixer([memory], prompt))
        model.decode_step = step
        got = generate(model, tiny.tokenizer, prompt, cfg, mixer=Mixer([memory], prompt))
        assert got.candidates[0].token_ids == want.candidates[0].token_ids, cut
    assert step.checks > before                     # drafts were checked through it


def test_steps_the_compiled_graph_does_not_fit_stay_eager(tiny):
    model = served(tiny.model)
    step = compile_decoding(model, tiny.context)
    assert model.decode_step is step
    one = torch.tensor([[5]])
    with torch.inference_mode():
        assert step(torch.tensor([[5, 6]]), model.new_cache(1, tiny.context)) is None
        assert step(torch.tensor([[5], [6]]), model.new_cache(2, tiny.context)) is None
        assert step(one, model.new_cache(1, 64)) is None        # another capacity
        base = model.new_cache(1, tiny.context)
        model(torch.tensor([[1, 2, 3]]), base)
        assert step(one, base.branch(2, 4)) is None              # beams' branch
        assert step(one, base) is not None and base.length == 4
    with torch.no_grad():                                        # not inference mode
        assert step(one, model.new_cache(1, tiny.context)) is None
    assert step.ready                               # none of it made it give up


@pytest.mark.parametrize("dynamic", [False, True], ids=["int8", "int8-dynamic"])
def test_int8_compiled_decodes_as_int8_eager_up_to_bf16_rounding(tiny, dynamic,
                                                                   monkeypatch):
    """The int8 products return bf16: logits agree within its rounding, and where greedy
    tokens part, the eager model's top two were that close. int8-dynamic's oneDNN call is
    a custom operator the compiled step calls as it is (model/quantize.py)."""
    from model.quantize import Int8Linear, int8_activations_available

    if dynamic and int8_activations_available() is not None:
        pytest.skip(int8_activations_available())
    # its layers wherever its kernel runs, whether or not it pays on this CPU
    monkeypatch.setattr("model.inference.int8_activations_pay", lambda: None)
    model = served(tiny.model, int8=True, dynamic=dynamic)
    assert all((m.key is not None) == dynamic
               for m in model.modules() if isinstance(m, Int8Linear))
    step = DecodeStep(model, tiny.context)
    step.compile()
    assert step.ready, step.failed
    ids = tiny.tokenizer.encode(TEXTS[0] + TEXTS[1])
    eager, fast, _, _ = teacher_forced(model, step, ids[:16], ids[16:])
    scale = eager.abs().max().item()
    assert (fast - eager).abs().max().item() <= scale * 2 ** -6
    same = 0
    for cut in range(16, len(TEXTS[1]), 4):
        prompt = tiny.tokenizer.encode(TEXTS[1][:cut])
        cfg = GenerationConfig(max_new_tokens=12)
        model.decode_step = None
        want = generate(model, tiny.tokenizer, prompt, cfg).candidates[0].token_ids
        model.decode_step = step
        got = generate(model, tiny.tokenizer, prompt, cfg).candidates[0].token_ids
        same += got == want
        if got != want:
            i = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
            with torch.inference_mode():
                model.decode_step = None
                logits = model(torch.tensor([prompt + want[:i]]))[0, -1]
            top = logits.topk(2).values
            assert (top[0] - top[1]).item() <= scale * 2 ** -6, (cut, i)
    assert same >= 1


def test_the_engine_compiles_after_warm_up_and_answers_the_same(tiny_model_dir):
    from completion.settings import EngineSettings
    from server.engine import CompletionEngine

    plain = CompletionEngine(load_model_dir(tiny_model_dir, device="cpu", dtype="float32"),
                             EngineSettings(temperature=0))
    lm = load_model_dir(tiny_model_dir, device="cpu", dtype="float32")
    prepare_for_inference(lm.model)
    prepare_for_inference(plain.loaded.model)
    # kept whatever it measures (`--compile on`): for a model this small the compiled and
    # the eager step can measure alike, and this test is about what the compiled one says
    fast = CompletionEngine(lm, EngineSettings(temperature=0), compile_decode=True,
                            keep_compiled=True)
    assert fast.describe()["decode"] == "compile pending" and plain.compile_step() is None
    assert plain.describe()["decode"] == "eager"
    fast.warmup()
    assert fast.compile_step() > 0
    assert fast.describe()["decode"].startswith("compiled"), fast.decode
    docs = [TEXTS[0], TEXTS[1], TEXTS[1] + "value\n\n    def ", "import os\n\n\ndef read(p"]
    for doc in docs:
        assert [c.text for c in fast.complete(doc, "\n")] == \
            [c.text for c in plain.complete(doc, "\n")], doc


def test_precompile_fills_the_cache_the_servers_compile_reads(tiny_model_dir, tmp_path):
    """`server --precompile` (scripts/setup.sh runs it): builds the native kernels and
    compiles as the server would, and leaves both in codecomplete's cache folder, where a
    server's start-up finds them."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["CODECOMPLETE_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-m", "server", "--model", str(tiny_model_dir),
                        "--precompile", "--log-level", "WARNING"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    # compiled, and kept or (a model this small can measure alike) not: either way it
    # compiled, which is what fills the cache
    kernel, attention, decode = r.stdout.strip().splitlines()
    assert decode.startswith(("decode step: compiled (", "decode step: eager: the "
                              "compiled step measured no faster")), r.stdout
    kernels = list((tmp_path / "cache" / "inductor").rglob("*.so"))
    assert kernels, "no compiled kernels in the cache"
    # and the native int8 kernel (model/native.py) the compiled step calls, where it is
    # for this machine (else PyTorch's kernel, and why)
    from model.native import unsupported

    if unsupported() is None:
        assert kernel == "int8 kernel: native int8 x int8 (model/native.py)", r.stdout
        assert attention == "attention kernel: native (model/native.py)", r.stdout
        assert list((tmp_path / "cache" / "kernels").glob("native-*.so"))
    else:
        assert kernel == f"int8 kernel: PyTorch int8 weight-only ({unsupported()})"
        assert attention == f"attention kernel: PyTorch ({unsupported()})"
    broken = subprocess.run([sys.executable, "-m", "server", "--model",
                             str(tmp_path / "missing"), "--precompile"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert broken.returncode == 1 and "missing" in broken.stderr


def test_precompile_exits_1_only_when_the_step_could_not_be_built(tiny_model_dir, monkeypatch,
                                                                 capsys):
    """`--precompile`'s exit status comes from whether the graphs were built, kept in use
    or not (a step turned off for measuring no faster still cached its kernels), not from
    the wording of the status line."""
    from server.cli import parse_args, precompile

    args = parse_args(["--model", str(tiny_model_dir), "--compile", "auto"])
    monkeypatch.setattr(DecodeStep, "_compile",
                        lambda self, options: "compiling the graphs broke (no compiler)")
    assert precompile(args) == 1
    assert "no compiler" in capsys.readouterr().out

    def turned_off(self, trials=5):
        self.ready = False
        self.failed = "the compiled step was slower"
        return 0.0, 0.0
    monkeypatch.setattr(DecodeStep, "_compile", lambda self, options: None)
    monkeypatch.setattr(DecodeStep, "keep_if_faster", turned_off)
    assert precompile(args) == 0
    assert "was slower" in capsys.readouterr().out


def test_a_compiled_step_no_faster_than_eager_is_turned_off(tiny, monkeypatch):
    """DecodeStep.keep_if_faster (compile_decoding calls it): the compiled step is kept
    only when it measured faster than the eager forward; the measuring steps are not
    counted as the requests' compiled steps."""
    import time

    model = served(tiny.model)
    step = DecodeStep(model, tiny.context)
    step.compile()
    assert step.ready, step.failed
    fast, slow = step.keep_if_faster()
    assert step.ready == (fast < slow) and fast > 0 and slow > 0
    assert step.steps == 0
    real = step._fn

    def slowed(*args):
        time.sleep(0.05)
        return real(*args)
    step.ready, step._fn = True, slowed
    fast, slow = step.keep_if_faster()
    assert fast >= 0.05 > slow
    assert not step.ready and "no faster than the eager one" in step.failed
    one = torch.tensor([[5]])
    with torch.inference_mode():
        assert step(one, model.new_cache(1, tiny.context)) is None     # eager from now on


def test_two_models_compiled_in_one_process_each_decode_their_own(tiny):
    """Calls skip the guards that do not tell graphs apart (model/decode_step.py), and two
    models' steps are graphs of the same code: each must still run its own model's weights,
    not the first compiled one's."""
    models = [served(tiny.model), served(tiny.model)]
    with torch.no_grad():
        for p in models[1].parameters():
            p.mul_(-1.5)
    steps = [DecodeStep(m, tiny.context) for m in models]
    for step in steps:
        step.compile()
        assert step.ready, step.failed
    ids = tiny.tokenizer.encode(TEXTS[1])
    outs = [teacher_forced(m, s, ids[:20], ids[20:28])[:2]
            for m, s in zip(models, steps, strict=True)]
    for eager, fast in outs:
        torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(outs[0][0], outs[1][0], atol=1e-2)   # they differ


def test_the_cpp_wrapper_that_fails_to_build_falls_back_to_python(tiny, monkeypatch):
    """On a CPU the step's wrapper is generated in C++; when that cannot be built the step
    is compiled again with the Python one rather than left eager."""
    model = served(tiny.model)
    step = DecodeStep(model, tiny.context)
    step.compile()
    assert step.ready and step.wrapper == "C++", step.failed
    real = torch.compile

    def no_cpp(fn, **kw):
        if (kw.get("options") or {}).get("cpp_wrapper"):
            raise RuntimeError("no C++ wrapper here")
        return real(fn, **kw)
    monkeypatch.setattr(torch, "compile", no_cpp)
    model = served(tiny.model)
    step = DecodeStep(model, tiny.context)
    step.compile()
    assert step.ready and step.wrapper == "Python", step.failed
    ids = tiny.tokenizer.encode(TEXTS[0])
    eager, fast, _, _ = teacher_forced(model, step, ids[:16], ids[16:24])
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)


def test_compile_on_keeps_a_step_that_measured_no_faster(tiny, monkeypatch):
    """`server --compile on` (keep_slower) keeps the compiled step where `auto` would turn
    it off for measuring no faster than eager (a step slowed here on purpose)."""
    import time

    real = torch.compile

    def slowed(fn, **kw):
        compiled = real(fn, **kw)

        def call(*args):
            time.sleep(0.02)
            return compiled(*args)
        return call
    monkeypatch.setattr(torch, "compile", slowed)
    for keep in (False, True):
        model = served(tiny.model)
        step = compile_decoding(model, tiny.context, keep_slower=keep)
        assert step.ready == keep and (model.decode_step is step) == keep, step.failed
