"""`ablation bench`: images/s of the harness's training step against a naive DataLoader and the compute limit.

Why: the harness keeps uint8 data on the training device and augments and rotates whole batches there
(data.py); this measures what that buys and what it leaves on the table, on one device, with one model,
batch size and stage per case:
  harness  train.make_inputs + train.train_step on batches from train.train_batches (the epoch loop's code);
  naive    what a user writes first: a Dataset of PIL images with torchvision transforms and a per-sample
           rotation, a DataLoader with one worker per core (pinned memory on cuda), then the same train_step;
  limit    train_step alone, repeated on one ready input tensor (normalised, channels_last where used).
Images/s counts model inputs (all4: four per image). No Ray is imported: the GPU machine has torch only.
The three are interleaved in rounds (run_case), so a slow spell of a shared machine does not hit one alone.
With --concurrent K, each of the K processes on a CPU gets max(1, cores // K) torch threads.
--precision and --channels-last are the trial keys (auto: bf16 and channels_last on cuda only); each row says
what they resolved to, so one CPU's fp32 and bf16 figures can be compared.

--json FILE gets a JSON list: one object per case, then, with --concurrent K > 1, one object with
"case": "concurrent" (K processes running the harness step of rotation/random1 at once, against one).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from PIL import Image
from torchvision import transforms as T

from ..errors import ConfigError, UserError
from ..storage.atomic import write_atomic
from ..storage.files import unwritable
from . import data as D
from .config import TrialConfig
from .models import set_train_mode
from .train import Setup, build, cores, device_name, make_inputs
from .train import numerics as train_numerics
from .train import resolve_device, train_batches, train_step

CASES: dict[str, dict] = {
    "rotation-random1": dict(stage="rotation", rotation_mode="random1"),
    "rotation-all4": dict(stage="rotation", rotation_mode="all4"),
    "finetune-freeze0": dict(stage="finetune", freeze=0),
    "finetune-freeze4": dict(stage="finetune", freeze=4),
}
CONCURRENT_CASE = "rotation-random1"
ROUNDS = 4  # timed steps of a case are split into this many interleaved rounds (see run_case)
DEFAULTS = {"cpu": dict(batch_size=128, steps=8, warmup=3), "cuda": dict(batch_size=512, steps=50, warmup=10)}


# ---------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    inputs: int
    start: float  # time.perf_counter (CLOCK_MONOTONIC: comparable across processes on Linux)
    end: float


def timed(step: Callable[[], int], warmup: int, steps: int, device: torch.device) -> Timing:
    """Run `step` (returns the model inputs it consumed) `warmup` times untimed, then `steps` times timed.
    The device is synchronised before both clock reads, so queued GPU work is never counted as done."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    inputs = sum(step() for _ in range(steps))
    sync()
    return Timing(inputs, start, time.perf_counter())


def forever(make: Callable[[], Iterable]) -> Iterator:
    """Batches without end: a new epoch whenever one runs out (timed steps may exceed one epoch). An epoch
    without a single batch stops it (it would spin for ever: main checks the batch fits the data first)."""
    while True:
        empty = True
        for batch in make():
            empty = False
            yield batch
        if empty:
            raise UserError("bench: an epoch of the training data gives no batch; lower --batch-size")


# ---------------------------------------------------------------------------------------------- the three steps


def harness_step(s: Setup) -> Callable[[], int]:
    """The epoch loop's own step (train.train), batch indices included."""
    batches = forever(lambda: train_batches(s))

    def step() -> int:
        idx = next(batches)
        x, y = make_inputs(s, s.train_x[idx], s.train_y[idx], train=True)
        train_step(s, x, y)
        return len(y)

    return step


def limit_step(s: Setup) -> Callable[[], int]:
    """train_step on one input already on the device in its final form: no data work at all."""
    idx = train_batches(s)[0]
    x, y = make_inputs(s, s.train_x[idx], s.train_y[idx], train=True)

    def step() -> int:
        train_step(s, x, y)
        return len(y)

    return step


class NaiveDataset(torch.utils.data.Dataset):
    """What a user would write first: one PIL image per sample, torchvision transforms, a per-sample turn.
    It mirrors the harness case: the same crop/flip if the case augments, the same rotation mode."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std, augment: bool, rotation: str | None):
        crop = [T.RandomCrop(tuple(x.shape[-2:]), padding=4), T.RandomHorizontalFlip()] if augment else []
        self.transform = T.Compose(crop + [T.ToTensor(), T.Normalize(mean, std)])
        self.x, self.y, self.rotation = x, y, rotation

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.transform(Image.fromarray(self.x[i].permute(1, 2, 0).numpy()))
        if self.rotation == "all4":
            return torch.stack([torch.rot90(img, k, dims=(-2, -1)) for k in range(4)]), torch.arange(4)
        if self.rotation == "random1":
            k = int(torch.randint(4, ()))
            return torch.rot90(img, k, dims=(-2, -1)), k
        return img, int(self.y[i])


def naive_step(s: Setup) -> Callable[[], int]:
    """The same train_step fed by a DataLoader over NaiveDataset, one worker per core; step.close() stops them."""
    cfg = s.cfg
    rotation = cfg.rotation_mode if cfg.stage == "rotation" else None
    ds = NaiveDataset(s.data.train.x, s.data.train.y, s.data.mean, s.data.std, cfg.augments, rotation)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=cfg.images_per_step, shuffle=True,
        drop_last=True, num_workers=cores(), pin_memory=s.device.type == "cuda")
    batches = forever(lambda: loader)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format

    def step() -> int:
        x, y = next(batches)
        x = x.reshape(-1, *x.shape[-3:]).to(s.device, non_blocking=True, memory_format=memory_format)
        y = y.reshape(-1).to(s.device, non_blocking=True)
        train_step(s, x, y)
        return len(y)

    step.close = batches.close  # drops the only reference to the loader's iterator: its workers shut down
    return step


# ---------------------------------------------------------------------------------------------- cases


def case_config(name: str, args, device: str, compiled: str | None = None) -> TrialConfig:
    """A case's trial config; compiled = a torch.compile mode, or None for eager."""
    return TrialConfig.from_dict({**CASES[name], "dataset": args.data, "data_dir": getattr(args, "data_dir", "data"),
                                  "batch_size": args.batch_size, "device": device, "seed": 0,
                                  "precision": getattr(args, "precision", "auto"),
                                  "channels_last": getattr(args, "channels_last", "auto"),
                                  "compile": compiled is not None, "compile_mode": compiled or "default"},
                                 where="bench")


def check_fits(cfgs: list[TrialConfig], data: D.Data, args) -> None:
    """The naive loader drops a short last batch (as a user's would), so a batch larger than the training set
    gives it no batch at all: refuse that in one line before measuring anything."""
    have = len(data.train.y)
    for cfg in cfgs:
        need = cfg.images_per_step
        if need > have:
            most = have * 4 if need != cfg.batch_size else have
            fix = f"use --batch-size {most} or less, or more images" if most >= 4 else "give it more images"
            raise ConfigError(f"bench: --batch-size {cfg.batch_size} needs {need} training images per step but "
                              f"--data {args.data} has {have}; {fix}")


def run_case(name: str, args, device: str, data, log, compiled: str | None = None) -> dict:
    """One case: naive, harness and limit on the same Setup (model, optimizer), interleaved in ROUNDS rounds
    of a few timed steps each, so that a slow spell of a shared machine hits all three alike rather than one.
    Naive goes first in a round: its workers' refill after its last step then costs the harness, not it."""
    s = build(case_config(name, args, device, compiled), data)
    set_train_mode(s.model, s.cfg.freeze)
    steps = {"naive": naive_step(s), "harness": harness_step(s), "limit": limit_step(s)}
    rounds = min(ROUNDS, args.steps)
    inputs, seconds = dict.fromkeys(steps, 0), dict.fromkeys(steps, 0.0)
    try:
        for r in range(rounds):
            for what, step in steps.items():
                t = timed(step, args.warmup if r == 0 else 0, args.steps // rounds + (r < args.steps % rounds),
                          s.device)
                inputs[what] += t.inputs
                seconds[what] += t.end - t.start
    finally:
        steps["naive"].close()
    rates = {what: inputs[what] / seconds[what] for what in ("harness", "naive", "limit")}
    log(f"  {name:<18} " + "  ".join(f"{what} {rate:.1f}" for what, rate in rates.items()) + " images/s"
        + " ({precision}, channels_last {channels_last}, compile {compile}{mode})".format(
            **numerics(s), mode=f" {s.cfg.compile_mode}" if s.cfg.compile else ""))
    cfg = s.cfg
    mode = {"rotation_mode": cfg.rotation_mode} if cfg.stage == "rotation" else {"freeze": cfg.freeze}
    return {"case": name, "stage": cfg.stage, **mode, **numerics(s), "images_per_s": rates,
            "vs_naive": rates["harness"] / rates["naive"], "vs_limit": rates["harness"] / rates["limit"],
            **environment(s.device, args), "naive_workers": cores()}


def numerics(s: Setup) -> dict:
    """What --precision and --channels-last resolved to on this device (auto differs between cpu and cuda), as
    train.numerics records it for a run, in the bench's own keys."""
    resolved = train_numerics(s)
    return {"precision": resolved["precision_used"], "channels_last": resolved["layout"] == "channels_last",
            "compile": s.cfg.compile, "compile_mode": s.cfg.compile_mode}


def environment(device: torch.device, args) -> dict:
    """Context of a figure; the load average says whether something else shared the cores meanwhile."""
    return {"device": device_name(device), "torch": torch.__version__, "batch_size": args.batch_size,
            "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads(),
            "loadavg_1min": os.getloadavg()[0]}


# ---------------------------------------------------------------------------------------------- concurrency


def concurrent_worker(args, device: str, data: D.Data, threads: int, barrier, results) -> None:
    """One of K processes: build the case, warm up, wait for the others, then time the harness step."""
    try:
        torch.set_num_threads(threads)
        s = build(case_config(CONCURRENT_CASE, args, device), data)
        step = harness_step(s)
        timed(step, args.warmup, 0, s.device)
        barrier.wait(timeout=600)
        t = timed(step, 0, args.steps, s.device)
        results.put((t.inputs, t.start, t.end, numerics(s)))
    except BaseException as exc:  # the parent raises it; abort() frees the others, so none waits forever
        barrier.abort()
        results.put(f"{type(exc).__name__}: {exc}")


def run_concurrent(k: int, args, device: str, data: D.Data) -> tuple[float, int, dict]:
    """Images/s of k processes together: all their inputs over the span from first start to last end
    (a conservative sum: a process that finishes early does not inflate it).
    Returns (rate, threads each, what precision and memory format resolved to).
    The loaded data travels to them in shared memory (torch's pickler), not loaded k more times."""
    ctx = mp.get_context("spawn")  # fork after CUDA init is unsafe; spawn also gives each a fresh torch
    threads = max(1, cores() // k) if device == "cpu" else torch.get_num_threads()
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=concurrent_worker, args=(args, device, data, threads, barrier, results))
             for _ in range(k)]
    for p in procs:
        p.start()
    got = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    errors = [g for g in got if isinstance(g, str)]
    if errors:
        raise RuntimeError(f"a concurrent bench process failed: {errors[0]}")
    span = max(g[2] for g in got) - min(g[1] for g in got)
    return sum(g[0] for g in got) / span, threads, got[0][3]


# ---------------------------------------------------------------------------------------------- entry


def resolve(args) -> str:
    """Device and defaults; a cuda request without a GPU is a one-line ConfigError (exit 2)."""
    device = resolve_device(args.device, "--device ").type
    for key, value in DEFAULTS[device].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    cases = getattr(args, "cases", None) or list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ConfigError(f"--cases: unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    args.cases = cases
    if args.steps < 1 or args.warmup < 0 or args.concurrent < 1:
        raise UserError("--steps and --concurrent must be >= 1 and --warmup >= 0")
    if getattr(args, "json", None):
        check_json_path(args.json)
    return device


def check_json_path(path: str) -> None:
    """--json is written after minutes of measuring: a place it cannot go is refused before the first step.
    Its folder must exist already (nothing is created for a refused run)."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError(f"--json {path} is a directory; give a file name, e.g. {Path(path) / 'bench.json'}")
    folder = target.absolute().parent
    if not folder.is_dir():
        problem = unwritable(folder)
        why = problem if problem and "is a file" in problem else f"folder {folder} does not exist"
        raise UserError(f"--json {path}: {why}; create the folder first or choose another path")
    problem = unwritable(folder)
    if problem:
        raise UserError(f"--json {path}: {problem}; choose another path")


def main(args) -> int:
    device = resolve(args)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    env = environment(torch.device(device), args)
    log(f"bench on {env['device']}, torch {env['torch']}, {env['threads']} threads, batch {args.batch_size}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per measurement, naive loader: {cores()} workers, "
        f"load average {env['loadavg_1min']:.2f} (other work on the cores skews every figure)")
    cfgs = [case_config(name, args, device) for name in args.cases]  # every case's config, before loading
    data = D.load_data(cfgs[0])
    check_fits(cfgs, data, args)
    rows = []
    for name in args.cases:
        row = run_case(name, args, device, data, log)
        log(f"{name:<18} harness/naive {row['vs_naive']:.2f}x   harness/limit {row['vs_limit']:.2f}")
        rows.append(row)
        if getattr(args, "compile", None):  # the same case with torch.compile (its warm-up steps compile)
            fast = run_case(name, args, device, data, log, compiled=args.compile)
            fast["vs_eager"] = fast["images_per_s"]["harness"] / row["images_per_s"]["harness"]
            log(f"{name:<18} compiled/eager harness {fast['vs_eager']:.2f}x")
            rows.append(fast)
    if args.concurrent > 1:
        log(f"concurrent: {CONCURRENT_CASE} harness step in 1, then {args.concurrent} processes at once")
        one, threads_one, _ = run_concurrent(1, args, device, data)
        many, threads, resolved = run_concurrent(args.concurrent, args, device, data)
        note = f", torch threads per process {threads} (= max(1, {cores()} cores // {args.concurrent}))" \
            if device == "cpu" else ""
        log(f"concurrent: 1 process {one:.1f} images/s; {args.concurrent} processes {many:.1f} images/s together "
            f"= {many / one:.2f}x{note}")
        rows.append({"case": "concurrent", "stage": "rotation", "rotation_mode": "random1",
                     **resolved, "processes": args.concurrent, "threads_per_process": threads,
                     "threads_single": threads_one,
                     "images_per_s": {"single": one, "concurrent": many}, "vs_single": many / one,
                     **{k: v for k, v in environment(torch.device(device), args).items() if k != "threads"}})
    if args.json:
        write_atomic(Path(args.json), json.dumps(rows, indent=1) + "\n")
        log(f"wrote {args.json}")
    return 0
