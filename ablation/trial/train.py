"""The epoch loop of both stages (rotation pretext, fine-tuning), evaluation, and exact resume.

Why: one loop serves `ablation train`, every Ray Tune trial and the benchmark, so a result means the same
thing everywhere. It chooses no file paths and imports no Ray: after each epoch it hands the metrics row
and a complete state (model, optimizer, scheduler, every RNG it uses, metrics history) to a callback.
A run resumed from that state ends bit-identical on CPU to one that never stopped. Rows also carry the
evidence report/checks.py judges: `frozen_intact` on every epoch of a frozen fine-tune, `backbone_digest` on
a rotation run's last epoch.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, UserError
from . import data as D
from .checkpoint import resolve_pretrained
from .config import TrialConfig
from .models import (apply_freeze, backbone_state, build_model, frozen_digest, load_backbone, set_train_mode,
                     weights_digest)

EpochCallback = Callable[[dict[str, Any], dict[str, Any]], None]


CRASH_AT_EPOCH = "ABLATION_TEST_CRASH_AT_EPOCH"  # a test switch, out of the trial keys (no user sets it)


class InjectedFault(RuntimeError):
    """Raised mid-way through epoch $ABLATION_TEST_CRASH_AT_EPOCH of a run not resumed from a checkpoint: the
    tests' stand-in for a trial that dies (a node lost, an OOM kill) and is retried from its checkpoint."""


def resolve_device(choice: str, option: str = "device=") -> torch.device:
    """auto/cpu/cuda -> the device; cuda without a visible GPU is a one-line error in the caller's spelling."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option}cuda but no GPU is visible to torch; use {option}auto or {option}cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def cores() -> int:
    return len(os.sched_getaffinity(0))


@functools.lru_cache(maxsize=None)  # every epoch row names its device: read /proc/cpuinfo once
def device_name(device: torch.device) -> str:
    """What a figure was measured on: the GPU's name, or the CPU model, family, cores and the vector ISA
    torch's kernels use. Two CPUs both named "AMD EPYC" differed 10x in speed and in the last bits of every
    result: the family and ISA tell them apart (CPU determinism holds per machine, not across them)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or "cpu"
    family = f"family {info['cpu family']} model {info.get('model', '?')}, " if "cpu family" in info else ""
    return f"{name} ({family}{cores()} cores, {torch.backends.cpu.get_cpu_capability()})"


@dataclass
class Setup:
    """Everything a step needs, built once per run (also used by the benchmark)."""

    cfg: TrialConfig
    device: torch.device
    model: nn.Module
    forward: Callable  # model, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator  # batch order, crops, flips, rotations; on the training device
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    data: D.Data
    bf16: bool
    channels_last: bool
    pretrained_digest: str = ""  # weights_digest of the loaded backbone, "" for random init
    frozen_digest: str = ""  # models.frozen_digest right after loading and freezing, "" when nothing is frozen
    val_x: torch.Tensor | None = None  # the validation split (val_split), None when off
    val_y: torch.Tensor | None = None


def build(cfg: TrialConfig, data: D.Data | None = None, device: str | None = None) -> Setup:
    """Seeded model, optimizer, schedule and device-resident data for one run. device: what the caller allows
    when it knows better than cfg.device (a Ray trial with no GPU share: cpu), else cfg.device."""
    device = resolve_device(device or cfg.device)
    torch.manual_seed(cfg.seed)
    data = data or D.load_data(cfg)
    outputs = 4 if cfg.stage == "rotation" else len(data.classes)
    model = build_model(cfg.stem, outputs)
    pretrained_digest = ""
    if cfg.stage == "finetune" and cfg.init == "pretrained":
        backbone = resolve_pretrained(cfg.pretrained_from)
        try:
            load_backbone(model, backbone)
        except ValueError as exc:  # another stem, or not a ResNet18 backbone
            raise UserError(f"pretrained_from={cfg.pretrained_from}: {exc}") from None
        pretrained_digest = weights_digest(backbone)
    freeze = cfg.freeze if cfg.stage == "finetune" else 0
    apply_freeze(model, freeze)
    frozen = frozen_digest(model, freeze)  # the reference every epoch is checked against (resume rebuilds it)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay)
    if cfg.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if cfg.precision == "bf16":
            raise UserError(f"precision=bf16, but {torch.cuda.get_device_name(device)} has no bfloat16; use "
                            f"precision=auto (fp32 there) or fp32")
        bf16 = False  # auto on a GPU without bfloat16 (before Ampere): fp32
    if device.type == "cuda":  # autotuned cuDNN kernels are fast but may differ run to run; deterministic ones not
        torch.backends.cudnn.deterministic = cfg.deterministic
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.cuda.reset_peak_memory_stats(device)  # peak_memory_mb is this run's (a Ray worker runs many)
    forward = compiled(model, cfg)
    as_stat = lambda v: torch.tensor(v, device=device).view(1, -1, 1, 1)  # noqa: E731
    return Setup(cfg=cfg, device=device, model=model, forward=forward, optimizer=optimizer, scheduler=scheduler,
                 gen=torch.Generator(device=device).manual_seed(cfg.seed),
                 train_x=data.train.x.to(device), train_y=data.train.y.to(device),
                 test_x=data.test.x.to(device), test_y=data.test.y.to(device),
                 mean=as_stat(data.mean), std=as_stat(data.std), data=data, bf16=bf16, channels_last=channels_last,
                 pretrained_digest=pretrained_digest, frozen_digest=frozen,
                 val_x=None if data.val is None else data.val.x.to(device),
                 val_y=None if data.val is None else data.val.y.to(device))


def compiled(model: nn.Module, cfg: TrialConfig) -> Callable:
    """The model as the steps call it: itself, or torch.compile'd in cfg.compile_mode. The CUDA-graph modes
    replay one captured graph per shape (train and eval each one, shapes being static under compile); each call
    is marked a new step, so that a replay may reuse the memory of the last one's outputs, consumed by then."""
    if not cfg.compile:
        return model
    fn = torch.compile(model, mode=cfg.compile_mode)
    if cfg.compile_mode == "default":
        return fn

    def step(x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return fn(x)
    return step


def _autocast(s: Setup):
    return torch.autocast(s.device.type, dtype=torch.bfloat16) if s.bf16 else contextlib.nullcontext()


def make_inputs(s: Setup, x: torch.Tensor, y: torch.Tensor, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images + class labels -> normalised model inputs + targets for the run's stage."""
    if train and s.cfg.augments:
        x = D.augment(x, s.gen)
    if s.cfg.stage == "rotation":
        x, y = D.rotation_batch(x, s.cfg.rotation_mode if train else "all4", s.gen)
    x = D.normalize(x, s.mean, s.std)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def train_step(s: Setup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on prepared inputs; returns (summed loss, correct count) as device tensors (no sync)."""
    with _autocast(s):
        logits = s.forward(x)
        loss = nn.functional.cross_entropy(logits, y, label_smoothing=s.cfg.label_smoothing)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.optimizer.step()
    return loss.detach() * len(y), (logits.argmax(1) == y).sum()


def train_batches(s: Setup) -> list[torch.Tensor]:
    """This epoch's batches of image indices. all4 feeds batch_size/4 images x 4 turns per step. A trailing
    batch of one image is dropped (BatchNorm cannot train on it); with compile any shorter trailing batch is:
    one shape, one compiled graph for every step (a ragged batch would compile a second one)."""
    order = torch.randperm(len(s.train_y), generator=s.gen, device=s.device)
    least = s.cfg.images_per_step if s.cfg.compile else 2
    return [b for b in order.split(s.cfg.images_per_step) if len(b) >= least]


@torch.no_grad()
def evaluate(s: Setup, xs: torch.Tensor, ys: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy on a held-out split; rotation is scored on all four turns of every image."""
    s.model.eval()
    chunk = max(1, s.cfg.eval_batch_size // (4 if s.cfg.stage == "rotation" else 1))
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    count = 0
    full = chunk * (4 if s.cfg.stage == "rotation" else 1)  # inputs of a whole chunk (rotation: four turns each)
    for x, y in zip(xs.split(chunk), ys.split(chunk)):
        x, y = make_inputs(s, x, y, train=False)
        pad = full - len(x) if s.cfg.compile else 0  # a short last chunk padded: one compiled eval graph
        with _autocast(s):  # (eval-mode BatchNorm treats each image alone: the padding changes no logit)
            logits = s.forward(torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x)[:len(x)]
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    return loss_sum.item() / count, correct.item() / count


def rng_state(s: Setup) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "data": s.gen.get_state()}
    if s.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(s.device)
    return state


def numerics(s: Setup) -> dict[str, Any]:
    """How this run computes, as resolved from auto: device kind, precision, memory layout."""
    tf32 = s.device.type == "cuda" and torch.backends.cudnn.allow_tf32  # torch's default for fp32 convolutions
    return {"device_kind": s.device.type, "precision_used": "bf16" if s.bf16 else "tf32" if tf32 else "fp32",
            "layout": "channels_last" if s.channels_last else "contiguous"}


def check_resumable(s: Setup, state: dict[str, Any]) -> None:
    """A checkpoint continues only as it was computed: its data generator's state is device-specific (a CPU
    state does not load into a CUDA generator, nor the reverse) and another precision or layout would make
    one trial of two kinds of arithmetic. Checkpoints from before this was recorded: the device kind from
    their RNG states, fp32 and the contiguous layout on a CPU."""
    kind = "cuda" if "cuda" in state["rng"] else "cpu"
    saved = state.get("numerics") or {"device_kind": kind, **({"precision_used": "fp32", "layout": "contiguous"}
                                                              if kind == "cpu" else {})}
    now = numerics(s)
    if any(saved[k] != now[k] for k in saved):
        said = ", ".join(f"{k} {saved[k]}" for k in saved)
        raise UserError(f"the checkpoint of epoch {state['epoch']} was computed with {said}; this process would "
                        f"continue with {', '.join(f'{k} {now[k]}' for k in saved)}: resume it where it started "
                        f"(set device=, precision=, channels_last= to match), or train it afresh under another "
                        f"study name or --out")


def restore(s: Setup, state: dict[str, Any]) -> None:
    check_resumable(s, state)
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    s.gen.set_state(state["rng"]["data"])
    if "cuda" in state["rng"] and s.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"], s.device)


def train(cfg: TrialConfig, on_epoch: EpochCallback, resume: dict[str, Any] | None = None,
          log: Callable[[str], None] = lambda _: None, data: D.Data | None = None,
          node: str = "", device: str | None = None) -> list[dict[str, Any]]:
    """Train cfg.epochs epochs (from resume's epoch on, if given); returns the metrics history.
    data: already loaded for cfg (tests and workers that run many trials load it once); node: the Ray node
    id of the worker, recorded in every epoch row beside the host (a cluster's epochs say where they ran)."""
    if resume is not None and TrialConfig.identity_of(resume["config"]) != cfg.identity():
        raise ConfigError("the checkpoint was written by a different config; use a new output dir")
    s = build(cfg, data, device)
    crash_at = int(os.environ.get(CRASH_AT_EPOCH) or 0)
    history: list[dict[str, Any]] = []
    start = 0
    if resume is not None:
        restore(s, resume)
        history, start = list(resume["history"]), int(resume["epoch"])
        log(f"resumed from epoch {start} of {cfg.epochs}")
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        set_train_mode(s.model, cfg.freeze if cfg.stage == "finetune" else 0)
        lr = s.optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=s.device)
        correct = torch.zeros((), device=s.device, dtype=torch.long)
        seen = 0
        batches = train_batches(s)
        for i, idx in enumerate(batches):
            if crash_at == epoch and resume is None and i == len(batches) // 2:
                raise InjectedFault(f"{CRASH_AT_EPOCH}={epoch}: injected fault mid-epoch (test switch)")
            x, y = make_inputs(s, s.train_x[idx], s.train_y[idx], train=True)
            step_loss, step_correct = train_step(s, x, y)
            loss_sum += step_loss
            correct += step_correct
            seen += len(y)
        train_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"epoch {epoch}: training loss is {train_loss}; lower lr= (now {cfg.lr})")
        train_time = time.perf_counter() - t0
        s.scheduler.step()
        test_loss, test_acc = evaluate(s, s.test_x, s.test_y)
        val = {} if s.val_y is None else dict(zip(("val_loss", "val_acc"), evaluate(s, s.val_x, s.val_y)))
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": correct.item() / max(seen, 1),
               "test_loss": test_loss, "test_acc": test_acc, "lr": lr,
               "epoch_time_s": time.perf_counter() - t0, "train_images_per_s": seen / train_time,
               "device": device_name(s.device), **numerics(s), "threads": torch.get_num_threads(),
               "host": platform.node(),
               "node": node, **val}  # where and how it was measured
        if s.device.type == "cuda":  # what one trial needs of a shared GPU (its `gpu` share caps it)
            row["peak_memory_mb"] = torch.cuda.max_memory_allocated(s.device) / 2**20
        if s.frozen_digest:  # checked every epoch, so the record says the frozen groups never moved
            row["frozen_intact"] = frozen_digest(s.model, cfg.freeze) == s.frozen_digest
        if cfg.stage == "rotation" and epoch == cfg.epochs:  # what a pretrained fine-tune must record loading
            row["backbone_digest"] = weights_digest(backbone_state(s.model))  # as its pretrained_digest
        history.append(row)
        copied = time.perf_counter()
        state = copy.deepcopy({  # a snapshot: the callback may keep it while training goes on
            "epoch": epoch, "epochs": cfg.epochs, "config": cfg.to_dict(), "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(), "rng": rng_state(s),
            "history": history, "data_fingerprint": s.data.fingerprint, "pretrained_digest": s.pretrained_digest,
            "numerics": numerics(s)})
        state["copy_s"] = time.perf_counter() - copied  # the callback adds it to the epoch's end work, then drops it
        on_epoch(row, state)
        log(f"[{cfg.stage}] epoch {epoch}/{cfg.epochs}  train_loss {train_loss:.4f}  train_acc {row['train_acc']:.4f}"
            f"  test_loss {test_loss:.4f}  test_acc {test_acc:.4f}  lr {lr:.4g}  {row['epoch_time_s']:.1f}s"
            f"  {row['train_images_per_s']:.0f} img/s" + (f"  val_acc {val['val_acc']:.4f}" if val else ""))
    return history
