"""Train a codecomplete model: a Trainer whose loop (`Trainer.run`) reads top to bottom.

    python -m training.train --config cpu-tiny --data data/NAME [--resume] [--lr 1e-3 ...]
    torchrun --nproc_per_node=2 -m training.train --config cpu-default --data data/NAME

Everything a run writes lives in `runs/NAME/`: `checkpoints/` (see training.checkpoints),
`metrics.jsonl` (one JSON object per log/eval line), TensorBoard events (when the
`tensorboard` package is installed), `config.json`, and `best/` — a model directory with
the weights of the lowest validation loss so far, which `training.export` copies out.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from model.atomic import atomic_write_text
from model.checkpoint import ModelMeta, save_model_dir
from model.config import ModelConfig
from model.device import cpu_has_fast_bf16, select_device
from model.tokenizer import PSM, SPM, Tokenizer
from model.transformer import Transformer
from training.checkpoints import (
    CheckpointError,
    apply_weights,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_metrics_line,
)
from training.config import TrainConfig, load_config, preset_names, settings_help
from training.data import DataError, PackedLoader, load_dataset, validation_batches
from training.horizon import HorizonHead, horizon_loss, horizon_targets
from training.optim import build_optimizers, lr_scale, set_lr


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size())


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA and on CPUs with native bf16; None means plain fp32."""
    if cfg.dtype == "fp32":
        return None
    if cfg.dtype == "bf16" or device.type == "cuda" or (device.type == "cpu"
                                                       and cpu_has_fast_bf16()):
        return torch.bfloat16
    return None


def model_config(cfg: TrainConfig, tok: Tokenizer) -> ModelConfig:
    vocab = -(-tok.vocab_size // 64) * 64
    return ModelConfig(vocab_size=vocab, hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_hidden_layers,
                       num_attention_heads=cfg.num_attention_heads,
                       num_key_value_heads=cfg.num_key_value_heads,
                       max_position_embeddings=cfg.seq_len, rope_theta=cfg.rope_theta,
                       tie_word_embeddings=cfg.tie_word_embeddings,
                       bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)


def run_meta(cfg: TrainConfig, step: int, **provenance: Any) -> ModelMeta:
    """The codecomplete.json of a model exported from this run: FIM order (the majority
    order in training), context size, and where the weights came from."""
    return ModelMeta(fim_order=SPM if cfg.spm_rate >= 0.5 else PSM, context_size=cfg.seq_len,
                     provenance={"run": cfg.name, "step": step, "data": cfg.data,
                                 "fim_rate": cfg.fim_rate, "fim_level": cfg.fim_level,
                                 "fim_spans": cfg.fim_spans,
                                 **provenance})


def token_byte_lengths(tok: Tokenizer, vocab: int) -> torch.Tensor:
    """Bytes each token id stands for (0 for special tokens): turns nats into bits/byte."""
    specials = set(tok.special_ids)
    return torch.tensor([0 if i in specials or i >= tok.vocab_size else
                         len(tok.token_bytes(i)) for i in range(vocab)], dtype=torch.float64)


@dataclass
class RunState:
    """Everything besides weights and optimizer moments that an exact resume needs."""
    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0          # seconds spent in training steps
    wall: float = 0.0             # seconds of the run's loop, evaluations and checkpoints too
    skipped: int = 0
    rollbacks: int = 0
    lr_factor: float = 1.0
    best_val: float = math.inf
    history: list[dict] = field(default_factory=list)


class NextTokenLoss(torch.nn.Module):
    """A language model and its next-token cross-entropy as one module.

    Training compiles (and DDP-wraps) this rather than the bare model, so torch.compile
    fuses the float cast, log-softmax and loss over the 16k-token vocabulary with the output
    head. Left eager, that loss and its backward were about a third of a CPU step
    (cpu-default: 2,400 -> 3,500 tokens/s compiled). Any module mapping ids [B, T] to
    logits [B, T, V] fits: the A/B benchmark wraps its GPT-2 baseline in it too.
    """

    def __init__(self, model: torch.nn.Module, horizon_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.horizon_weight = horizon_weight
        self.horizon = HorizonHead(model.config.hidden_size) if horizon_weight > 0 else None

    def forward(self, batch: torch.Tensor, reduction: str = "mean",
                horizon: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """The next-token loss of `batch` [B, T + 1]; with the horizon head and its
        targets (training/horizon.py) plus horizon_weight x the head's loss. `weights`
        [B, T] (per target token, e.g. `--prose-weight`) make the mean a weighted one."""
        if self.horizon is None or horizon is None:
            logits = self.model(batch[:, :-1])
        else:
            hidden = self.model.features(batch[:, :-1])
            logits = self.model.lm_head(hidden)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               batch[:, 1:].reshape(-1),
                               reduction=reduction if weights is None else "none")
        if weights is not None:
            loss = (loss * weights.reshape(-1)).sum() / weights.sum()
        if self.horizon is None or horizon is None:
            return loss
        return loss + self.horizon_weight * horizon_loss(self.horizon(hidden), horizon)


def compiled(net: torch.nn.Module, cfg: TrainConfig, device: torch.device,
             log=print) -> torch.nn.Module:
    """`net` under torch.compile when the config asks and this machine can: Inductor's CPU
    code needs a C++ compiler, and a preset that compiles should still train without one
    (slower, eagerly) rather than fail at its first step."""
    if not cfg.compile:
        return net
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        log("torch.compile needs a C++ compiler (none on PATH): training without it")
        return net
    return torch.compile(net)


@torch.no_grad()
def evaluate_loss(model: Transformer, batches: list[np.ndarray], byte_len: torch.Tensor,
                  device: torch.device, amp: torch.dtype | None) -> tuple[float, float]:
    """(mean validation loss in nats/token, bits per byte) on fixed left-to-right windows."""
    model.eval()
    nats = 0.0
    count = 0
    nbytes = 0.0
    for b in batches:
        x = torch.from_numpy(b).to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = NextTokenLoss(model)(x, reduction="sum")
        nats += loss.item()
        count += x[:, 1:].numel()
        nbytes += byte_len[x[:, 1:].cpu()].sum().item()
    model.train()
    return nats / max(1, count), nats / math.log(2) / max(1.0, nbytes)


def sample_completions(model: Transformer, tok: Tokenizer, batches: list[np.ndarray],
                       n: int, device: torch.device) -> list[dict[str, str]]:
    """Greedy continuations of a few validation prompts, logged as text at each eval."""
    from model.generate import GenerationConfig, generate
    out = []
    model.eval()
    for i in range(min(n, len(batches))):
        ids = batches[i][0][:96].tolist()
        if tok.eot_id in ids:
            ids = ids[:ids.index(tok.eot_id)] or ids[-32:]
        res = generate(model, tok, ids, GenerationConfig(max_new_tokens=48, temperature=0.0))
        out.append({"prompt": tok.decode(ids)[-200:], "completion": res.candidates[0].text})
    model.train()
    return out


class Logger:
    """metrics.jsonl always; TensorBoard when installed; only on rank 0."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.metrics = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        write_metrics_line(self.metrics, {"step": step, "time": time.time(), **record})
        if self.tb:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)
            for i, s in enumerate(record.get("samples", [])):
                self.tb.add_text(f"sample/{i}", f"```\n{s['prompt']}\n>>>\n{s['completion']}\n```",
                                 step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb:
            self.tb.close()


@dataclass
class StepResult:
    """What one optimizer step produced: the mean loss over its micro-batches (and
    processes), the gradient norm before clipping, and whether either was not finite."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    bad: bool


class Trainer:
    """One training run, in named steps: `__init__` sets up (device, processes, data,
    model, optimizers, resume or initial weights, the run folder, compilation), `run` is
    the loop, and each of its parts (`step`, `skip_bad_step`, `log_progress`, `evaluate`,
    `checkpoint`) is a method a reader can follow on its own."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, log=print):
        self.cfg, self.log = cfg, log
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = select_device(cfg.device)
        self.dd = init_distributed(self.device)
        if self.dd.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.amp = autocast_dtype(cfg, self.device)
        torch.manual_seed(cfg.seed)
        self.load_data()
        self.run_dir = Path(cfg.runs_dir) / cfg.name
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.mcfg = model_config(cfg, self.tok)
        self.byte_len = token_byte_lengths(self.tok, self.mcfg.vocab_size)
        self.model = Transformer(self.mcfg).to(self.device)
        self.loss = NextTokenLoss(self.model, cfg.horizon_weight).to(self.device)
        self.example_ends = tuple(t for t in (self.tok.eot_id, self.tok.file_sep_id)
                                  if t is not None)    # what ends a FIM example
        self.optimizers = build_optimizers(self.model, cfg, self.loss.horizon)
        self.rs = RunState()
        self.start_weights(resume)
        self.write_run_config()
        net: torch.nn.Module = self.loss
        if self.dd.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(net)
        self.net = compiled(net, cfg, self.device, log)
        self.logger = Logger(self.run_dir, self.dd.main)
        self.consecutive_bad = 0

    def load_data(self) -> None:
        """The tokenizer, the training loader and the fixed validation windows."""
        cfg, dd = self.cfg, self.dd
        if not cfg.prose_weight >= 0:
            raise ValueError(f"--prose-weight {cfg.prose_weight} must be 0 or more.")
        self.tok, self.manifest, splits = load_dataset(cfg.data)
        if "val" not in splits or not splits["val"].docs:
            raise DataError(f"{cfg.data} has no validation split; re-run prepare with more "
                            "than one repository.")
        self.loader = PackedLoader(splits["train"], self.tok, cfg.seq_len, cfg.batch_size,
                                   cfg.seed, cfg.fim_rate, cfg.spm_rate, dd.rank, dd.world,
                                   cfg.fim_level, cfg.repo_packing, cfg.repo_rate,
                                   cfg.repo_context_tokens, cfg.repo_tries, cfg.fim_spans,
                                   cfg.fim_ends, track_prose=cfg.prose_weight != 1.0)
        # The same validation windows whatever the process count: eval_batches global batches.
        self.val = validation_batches(splits["val"], self.tok, cfg.seq_len, cfg.batch_size,
                                      cfg.eval_batches * dd.world)

    def start_weights(self, resume: bool) -> None:
        """Resume the latest checkpoint, or start from `init_from`, or from scratch (a run
        folder with checkpoints is never started over)."""
        cfg = self.cfg
        latest = latest_checkpoint(self.ckpt_dir)
        if cfg.init_from and not (resume and latest is not None):
            init_weights(self.model, Path(cfg.init_from), self.tok, self.manifest, self.loader,
                         self.dd, self.log)
        if resume:
            if latest is None:
                self.log(f"no checkpoint in {self.ckpt_dir}; starting from scratch")
            else:
                self.restore(latest, with_data=True)
                self.log(f"resumed {self.run_dir} at step {self.rs.step}")
        elif self.dd.main and self.ckpt_dir.exists() and any(self.ckpt_dir.iterdir()):
            raise CheckpointError(f"{self.run_dir} already has checkpoints; pass --resume to "
                                  "continue it or choose another --name.")

    def write_run_config(self) -> None:
        if self.dd.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.json", json.dumps(
                {"train": self.cfg.to_dict(), "model": self.mcfg.to_hf_dict(),
                 "world_size": self.dd.world,
                 "data_manifest": {k: self.manifest[k]
                                   for k in ("fingerprint", "tokenizer_sha256")}},
                indent=2) + "\n")

    def restore(self, path: Path, with_data: bool) -> None:
        """Weights and optimizer state from a checkpoint; with `with_data` also the run
        state, data position and RNG (an exact resume), without it only the weights and
        moments (a rollback after non-finite losses)."""
        ck = load_checkpoint(path)
        apply_weights(self.model, ck)
        saved = ck.state
        if self.loss.horizon is not None and "horizon" in saved:
            self.loss.horizon.load_state_dict(saved["horizon"])
        try:
            for opt, sd in zip(self.optimizers, saved["optimizers"], strict=True):
                opt.load_state_dict(sd)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"optimizer state in {path} does not fit this config "
                                  f"({e}).") from None
        if with_data:
            self.rs.__dict__.update(saved["run"])
            self.loader.load_state(saved["data"][self.dd.rank])
            torch.set_rng_state(saved["rng"])

    def checkpoint(self) -> None:
        data_states = [self.loader.state()]
        if self.dd.world > 1:
            data_states = [None] * self.dd.world
            dist.all_gather_object(data_states, self.loader.state())
        if self.dd.main:
            save_checkpoint(self.ckpt_dir, self.rs.step, self.model, {
                "optimizers": [o.state_dict() for o in self.optimizers], "data": data_states,
                "rng": torch.get_rng_state(), "run": dict(self.rs.__dict__),
                **({"horizon": self.loss.horizon.state_dict()}
                   if self.loss.horizon is not None else {})},
                self.cfg.keep_checkpoints)

    def evaluate(self) -> None:
        """Validation loss and bits/byte; a new best is saved as `best/`."""
        rs, cfg = self.rs, self.cfg
        loss, bpb = evaluate_loss(self.model, self.val, self.byte_len, self.device, self.amp)
        record: dict[str, Any] = {"val_loss": loss, "val_bpb": bpb, "tokens": rs.tokens}
        if self.dd.main and cfg.sample_every_eval:
            record["samples"] = sample_completions(self.model, self.tok, self.val,
                                                   cfg.sample_every_eval, self.device)
        if loss < rs.best_val:
            rs.best_val = loss
            if self.dd.main:
                meta = run_meta(cfg, rs.step, val_loss=loss, val_bpb=bpb, tokens=rs.tokens)
                save_model_dir(self.run_dir / "best", self.model, self.tok, meta)
        self.logger.log(rs.step, record)
        rs.history.append({"step": rs.step, "val_loss": loss, "val_bpb": bpb})
        self.log(f"step {rs.step}: val loss {loss:.4f}, {bpb:.4f} bits/byte")

    def step(self) -> StepResult:
        """Forward and backward over `grad_accum` micro-batches (DDP syncs on the last),
        then the clipped gradient norm; the optimizers have not stepped yet."""
        cfg, dd, device = self.cfg, self.dd, self.device
        set_lr(self.optimizers, lr_scale(self.rs.step, cfg, self.rs.wall) * self.rs.lr_factor)
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            rows, prose = self.loader.next_batch_and_prose()
            batch = torch.from_numpy(rows).to(device, non_blocking=True)
            extra = {} if self.loss.horizon is None else {"horizon": torch.from_numpy(
                horizon_targets(rows, self.tok.fim_middle_id, self.example_ends)).to(device)}
            if prose is not None:
                extra["weights"] = torch.from_numpy(np.where(
                    prose[:, 1:], np.float32(cfg.prose_weight), np.float32(1.0))).to(device)
            sync = contextlib.nullcontext() if (dd.world == 1 or micro == cfg.grad_accum - 1) \
                else self.net.no_sync()
            with sync, torch.autocast(device.type, dtype=self.amp or torch.float32,
                                      enabled=self.amp is not None):
                loss = self.net(batch, **extra) / cfg.grad_accum
                if self.rs.step in cfg.debug_nan_steps:
                    loss = loss * float("nan")
                loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.loss.parameters(), cfg.grad_clip)
        if dd.world > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= dd.world
        bad = not (torch.isfinite(loss_sum).item() and torch.isfinite(grad_norm).item())
        return StepResult(loss_sum, grad_norm, bad)

    def out_of_time(self) -> bool:
        """Whether the run's time budget is spent; every process agrees (the slowest
        clock decides), so all of them stop after the same step."""
        cfg, rs = self.cfg, self.rs
        if cfg.time_budget_min <= 0:
            return False
        if self.dd.world > 1:
            # on the process's own device: NCCL reduces CUDA tensors only (gloo: CPU)
            wall = torch.tensor([rs.wall], dtype=torch.float64, device=self.device)
            dist.all_reduce(wall, op=dist.ReduceOp.MAX)
            rs.wall = float(wall)
        return rs.wall >= cfg.time_budget_min * 60

    def apply_step(self) -> None:
        self.consecutive_bad = 0
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def skip_bad_step(self) -> None:
        """A non-finite loss or gradient: drop the gradients and count it; after
        `nan_patience` in a row, roll back to the last checkpoint at a lower learning rate."""
        rs, cfg = self.rs, self.cfg
        rs.skipped += 1
        self.consecutive_bad += 1
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.logger.log(rs.step, {"skipped_steps": rs.skipped, "event": "non-finite loss"})
        self.log(f"step {rs.step}: non-finite loss or gradient, step skipped "
                 f"({rs.skipped} so far)")
        if self.consecutive_bad >= cfg.nan_patience:
            latest = latest_checkpoint(self.ckpt_dir)
            if latest is not None:
                self.restore(latest, with_data=False)
            rs.lr_factor *= cfg.rollback_lr_factor
            rs.rollbacks += 1
            self.consecutive_bad = 0
            self.log(f"rolled back to {latest} with learning rate x{rs.lr_factor:g}")
            self.logger.log(rs.step, {"event": "rollback", "lr_factor": rs.lr_factor})

    def run(self) -> Path:
        """The loop: step, log, evaluate, checkpoint; then export and leave DDP."""
        from tqdm import tqdm
        cfg, rs, dd = self.cfg, self.rs, self.dd
        bar = tqdm(total=cfg.max_steps, initial=rs.step, disable=not dd.main or None,
                   unit="step", dynamic_ncols=True)
        self.model.train()
        progress = Progress(self, bar)
        if rs.step == 0:
            self.evaluate()
        t_loop, wall_before = time.time(), rs.wall
        last = self.out_of_time()
        while rs.step < cfg.max_steps and not last:
            t_step = time.time()
            result = self.step()
            if result.bad:
                self.skip_bad_step()
            else:
                self.apply_step()
                progress.add(result.loss)
            rs.step += 1
            rs.tokens += cfg.tokens_per_step * dd.world
            rs.elapsed += time.time() - t_step
            # (out_of_time makes every process's clock the slowest one's, so the next
            # step's learning rate, which follows the clock, is the same everywhere)
            rs.wall = wall_before + time.time() - t_loop
            last = rs.step == cfg.max_steps or self.out_of_time()
            bar.update(1)
            if rs.step % cfg.log_every == 0 or last:
                progress.report(result.grad_norm)
            if rs.step % cfg.eval_every == 0 or last:
                self.evaluate()
            if rs.step % cfg.checkpoint_every == 0 or last:
                self.checkpoint()
        if last and rs.step < cfg.max_steps:
            self.log(f"time budget of {cfg.time_budget_min:g} min reached at step {rs.step} "
                     f"({rs.wall / 60:.1f} min)")
        bar.close()
        self.logger.close()
        if dd.main and cfg.export_dir:
            export_best(self.run_dir, Path(cfg.export_dir))
        if dd.world > 1:
            # Leave together and drop DDP's reducer (it holds the process group) first: a rank
            # that reached interpreter exit with gloo work still referenced died with SIGABRT
            # ("terminate called without an active exception") about one run in twelve.
            del self.net
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()
        return self.run_dir


class Progress:
    """The training loss averaged over a log window, tokens/s and ETA, for the progress bar,
    a plain log line (without a terminal) and metrics.jsonl."""

    def __init__(self, trainer: Trainer, bar):
        self.trainer, self.bar = trainer, bar
        rs = trainer.rs
        self.t_last, self.tok_last = time.time(), rs.tokens
        self.t_start, self.step_start = self.t_last, rs.step
        self.loss = torch.zeros((), device=trainer.device)
        self.steps = 0

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.steps += 1

    def report(self, grad_norm: torch.Tensor) -> None:
        t, cfg, rs = self.trainer, self.trainer.cfg, self.trainer.rs
        now = time.time()
        tps = (rs.tokens - self.tok_last) / max(1e-9, now - self.t_last)
        self.t_last, self.tok_last = now, rs.tokens
        loss_v = (self.loss / max(1, self.steps)).item()
        self.loss.zero_()
        self.steps = 0
        self.bar.set_postfix(loss=f"{loss_v:.3f}", tok_s=f"{tps:,.0f}")
        if t.dd.main and self.bar.disable:    # no terminal (a log file): a plain line instead
            eta = (cfg.max_steps - rs.step) * (now - self.t_start) / max(
                1, rs.step - self.step_start)
            t.log(f"step {rs.step}/{cfg.max_steps}: loss {loss_v:.3f}, {tps:,.0f} tokens/s, "
                  f"ETA {eta / 60:.0f} min")
        t.logger.log(rs.step, {"train_loss": loss_v,
                               "lr": t.optimizers[0].param_groups[0]["lr"],
                               "grad_norm": float(grad_norm), "tokens_per_s": tps,
                               "elapsed_s": rs.elapsed, "tokens": rs.tokens,
                               "skipped_steps": rs.skipped})


def train(cfg: TrainConfig, resume: bool = False, log=print) -> Path:
    """Run (or resume) training; returns the run folder."""
    return Trainer(cfg, resume, log).run()


def init_weights(model: Transformer, src: Path, tok: Tokenizer, manifest: dict,
                 loader: PackedLoader, dd: Dist, log) -> None:
    """Start a new run from existing weights (fresh optimizer and schedule).

    `src` is a model directory (fine-tune the shipped model on your own code: its tokenizer
    must be the data's) or a training checkpoint folder. A checkpoint of a run on the same
    data, seed and process count also hands over its data position, so continuing a run sees
    the documents it has not seen yet before any it has."""
    from model.checkpoint import ModelDirError, load_model_dir
    if (src / "state.pt").is_file():
        ck = load_checkpoint(src)
        apply_weights(model, ck)
        run_cfg = src.parent.parent / "config.json"
        try:
            saved = json.loads(run_cfg.read_text())
            same_data = (saved["data_manifest"]["fingerprint"] == manifest["fingerprint"]
                         and saved["world_size"] == dd.world
                         and saved["train"]["seed"] == loader.seed)
        except (OSError, ValueError, KeyError, TypeError):
            same_data = False
        if same_data:
            loader.load_state(ck.state["data"][dd.rank])
        log(f"initialised from checkpoint {src} (step {ck.step}"
            f"{', continuing its data order' if same_data else ''})")
        return
    try:
        loaded = load_model_dir(src, device="cpu", dtype=torch.float32)
    except ModelDirError as e:
        raise CheckpointError(f"--init-from: {e}") from None
    if loaded.tokenizer.sha256() != tok.sha256():
        raise CheckpointError(f"--init-from: {src}'s tokenizer is not the one of the data; "
                              f"prepare the data with --tokenizer {src / 'tokenizer.json'}.")
    # A longer context is allowed: RoPE has no weights for positions, so the same weights
    # continue training at a longer seq_len (extending the shipped model's context).
    theirs, ours = loaded.config.to_hf_dict(), model.config.to_hf_dict()
    if theirs["max_position_embeddings"] <= ours["max_position_embeddings"]:
        theirs["max_position_embeddings"] = ours["max_position_embeddings"]
    if theirs != ours:
        diff = ", ".join(f"{k} {theirs.get(k)} vs {ours.get(k)}" for k in sorted(ours)
                         if theirs.get(k) != ours.get(k))
        raise CheckpointError(f"--init-from: {src} has another model shape than this config "
                              f"({diff}).")
    model.load_state_dict(loaded.model.state_dict())
    log(f"initialised from model directory {src}")


def export_best(run_dir: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Copy the run's best model directory to `out`, with weights cast to `dtype`."""
    from model.checkpoint import load_model_dir
    best = run_dir / "best"
    if not best.is_dir():
        raise CheckpointError(f"{run_dir} has no best/ model yet: no evaluation has run.")
    loaded = load_model_dir(best, device="cpu", dtype=torch.float32)
    return save_model_dir(out, loaded.model, loaded.tokenizer, loaded.meta, dtype=dtype)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, str]]:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (each overrides the preset; a preset's values replace the defaults):\n"
               + settings_help() + f"\n\npresets: {', '.join(preset_names())}")
    ap.add_argument("--config", required=True, help="preset name or .toml file")
    ap.add_argument("--resume", action="store_true")
    args, rest = ap.parse_known_args(argv)
    overrides: dict[str, str] = {}
    i = 0
    while i < len(rest):
        key = rest[i]
        if not key.startswith("--"):
            ap.error(f"unexpected argument {key!r}")
        if "=" in key:
            k, v = key[2:].split("=", 1)
            overrides[k] = v
            i += 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            overrides[key[2:]] = rest[i + 1]
            i += 2
        else:
            overrides[key[2:]] = "true"
            i += 1
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        cfg = load_config(args.config, overrides)
        train(cfg, resume=args.resume, log=lambda s: print(s, file=sys.stderr, flush=True))
    except (ValueError, OSError) as e:  # DataError, CheckpointError, config errors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
