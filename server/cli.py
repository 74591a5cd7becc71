"""`server --model DIR`: load a model directory and serve LSP over stdio (or TCP)."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from completion.settings import EngineSettings, update_settings
from model.checkpoint import ModelDirError, load_model_dir
from model.decode_step import compile_by_default
from model.inference import int8_by_default, prepare_for_inference
from model.paths import default_model_dir
from server.engine import CompletionEngine
from server.lsp import build_server
from server.threads import new_model_thread
from server.transport import serve_stdio, serve_tcp


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="server", description=__doc__)
    ap.add_argument("--model", help="model directory (default: the shipped default model)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    ap.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    ap.add_argument("--stdio", action="store_true",
                    help="serve over stdio (the default; accepted because LSP clients such "
                         "as vscode-languageclient pass it)")
    ap.add_argument("--tcp", metavar="HOST:PORT", help="serve over TCP instead of stdio")
    ap.add_argument("--temperature", type=float, default=EngineSettings.temperature)
    ap.add_argument("--top-p", dest="top_p", type=float, default=EngineSettings.top_p)
    ap.add_argument("--max-tokens", dest="max_tokens", type=int,
                    default=EngineSettings.max_tokens)
    ap.add_argument("--quantize", choices=("auto", "none", "int8", "int8-dynamic"),
                    default="auto",
                    help="int8: weight-only int8 for decoding on CPU (decode 1.4x faster "
                         "for the shipped model, 1.5-2.1x for 30-300M models; prefill keeps "
                         "the float weights; see docs/models.md); int8-dynamic: the "
                         "activations of decoding quantized too (for large models, whose "
                         "decoding reads weights: faster again, a little less accurate); "
                         "auto (the default): int8 on CPU, none on a GPU")
    ap.add_argument("--compile", choices=("auto", "on", "none"), default="auto",
                    help="compile the one-token decode step in the background after start-up "
                         "(decode ~2x faster on CPU; ~25-75 s the first time on 2 cores, a "
                         "few once cached; requests meanwhile use the eager model; see "
                         "docs/server.md); auto (the default): on a CPU, kept only where it "
                         "measures faster than eager; on: anywhere, and kept")
    ap.add_argument("--precompile", action="store_true",
                    help="compile the decode step as the server would with these options, "
                         "filling the on-disk cache its start-up compile then reads (a few "
                         "seconds instead of ~25-75), and exit (scripts/setup.sh runs it)")
    ap.add_argument("--threads", type=thread_count, default=None,
                    help="CPU threads for the model (default: PyTorch's, one per core). "
                         "On a machine whose other programs keep a core busy, fewer "
                         "threads answer sooner: on 2 cores with one kept busy, cold "
                         "requests took 241 ms at the median with 1 thread against 403 "
                         "with 2 (docs/server.md)")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def thread_count(text: str) -> int:
    """`--threads`: a whole number of at least 1, or argparse's one-line error naming it."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of threads (>= 1)")
    return n


def precompile(args: argparse.Namespace) -> int:
    """`--precompile`: load and compile as the server would and say how it went; exit 1
    when the compile failed (the server still works then, decoding eagerly). A compiled
    step that measured no faster than the eager one is not a failure: its kernels are
    cached all the same."""
    engine, error = load_engine(args)
    if engine is None:
        print(error, file=sys.stderr)
        return 1
    engine.native_kernel()
    if engine.int8_kernel:
        print(f"int8 kernel: {engine.int8_kernel}")
    print(f"attention kernel: {engine.attention_kernel}")
    if engine.float_products:
        print(f"float products: {engine.float_products}")
    if engine.compile_step() is None:
        print("decode step: not compiled with these options on this device (--compile)")
        return 0
    print(f"decode step: {engine.decode}")
    return 1 if engine.compile_error else 0


def load_engine(args: argparse.Namespace) -> tuple[CompletionEngine | None, str | None]:
    """The engine, or a one-sentence error to show the client (the server still starts)."""
    path = args.model or default_model_dir()
    if path is None:
        return None, ("no model directory: pass --model DIR, or build the stand-in model "
                      "with scripts/demo.sh (python -m training.standin --out DIR).")
    try:
        loaded = load_model_dir(path, device=args.device, dtype=args.dtype)
        int8 = args.quantize in ("int8", "int8-dynamic") or (
            args.quantize == "auto" and int8_by_default(loaded.device))
        chosen = prepare_for_inference(loaded.model, int8=int8,
                                       int8_activations=args.quantize == "int8-dynamic")
        logging.getLogger("codecomplete").info("inference: %s", chosen)
    except (ModelDirError, ValueError) as e:
        return None, f"codecomplete could not load its model: {e}"
    settings = EngineSettings()
    problems = update_settings(settings, {"temperature": args.temperature, "top_p": args.top_p,
                                          "max_tokens": args.max_tokens},
                               loaded.context)
    for problem in problems:
        logging.getLogger("codecomplete").warning(problem)
    compile_decode = args.compile == "on" or (args.compile == "auto"
                                              and compile_by_default(loaded.device))
    return CompletionEngine(loaded, settings, compile_decode,
                            keep_compiled=args.compile == "on"), None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        # pygls logs every JSON-RPC message at INFO, document text included: keep that
        # (and the volume: an editor's log, or a pipe nobody reads, fills up) for DEBUG.
        logging.getLogger("pygls").setLevel(logging.WARNING)
    if args.threads:
        # before any of the model's work: its threads' OpenMP teams take this size, and
        # so do the compiled kernels (inductor builds them for the count; --precompile
        # must be given the same to fill the cache the server then reads)
        torch.set_num_threads(args.threads)
    if args.precompile:
        return precompile(args)
    model_thread = new_model_thread()   # loads, warms up and serves it (server/threads.py)
    engine, error = model_thread.submit(load_engine, args).result()
    if error:
        logging.getLogger("codecomplete").error(error)
    server = build_server(engine, error, model_thread)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not port.isdigit():
            print(f"--tcp {args.tcp!r} must look like HOST:PORT.", file=sys.stderr)
            return 2
        serve_tcp(server, host or "127.0.0.1", int(port))
    else:
        serve_stdio(server)
    return 0
