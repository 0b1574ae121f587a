"""`ablation train / sweep / status / report / export / bench`: argument parsing and dispatch only.

Heavy modules (torch, ray, pandas) are imported inside each command so that bad input is answered fast.
Every expected failure is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from .errors import Stopped, UserError
from .storage.files import read_yaml, unwritable
from .trial.config import TrialConfig, defaults_table, parse_overrides


def cmd_train(args) -> int:
    values = read_yaml(args.config) if args.config else {}
    from .study.spec import SPEC_KEYS

    if study_keys := sorted(k for k in values if k in SPEC_KEYS and k not in TrialConfig.fields()):
        raise UserError(f"{args.config} is a study spec ({', '.join(study_keys)}: keys of a study, not of one run); "
                        f"run it with `ablation sweep {args.config}`")
    values.update(parse_overrides(args.overrides))
    cfg = TrialConfig.from_dict(values, where=args.config or "train")
    if not args.out:  # checked after the config, so a bad key is named even when --out is missing too
        raise UserError("train needs --out DIR (the run directory for metrics.csv and checkpoints; "
                        "rerun with the same --out to resume)")
    from .storage.store import is_uri

    if not is_uri(args.out):  # a URI run dir is staged locally and pushed; its store answers for itself
        problem = unwritable(args.out)
        if problem:  # before any data loading: not a traceback after the first epoch
            raise UserError(f"--out {args.out}: {problem}; choose another --out")
    from .trial.rundir import run  # torch is imported only once the config is known to be good

    out = located(args.out) if is_uri(args.out) else Path(args.out)  # Path("s3://b/x") would be the local s3:/b/x
    run(cfg, out, log=lambda msg: print(msg, flush=True))
    print(f"wrote {args.out.rstrip('/')}/metrics.csv")
    return 0


def cmd_sweep(args) -> int:
    from .driver.sweep import run_study

    return run_study(args.spec, storage=args.storage, address=args.address, fresh=args.fresh,
                     overrides=parse_overrides(args.overrides), verbose=args.verbose, callbacks=args.callback,
                     tracking_uri=args.tracking_uri)


def local_study(location: str) -> Path:
    """The study as a local folder: the path itself, or a copy of a URI study (checked to be one first)."""
    from .storage.store import check_reachable, is_uri, local_copy
    from .study.records import read_manifest

    if is_uri(location):
        check_reachable(location)
        read_manifest(location)  # not a study: one line naming the URI, and nothing copied
    return local_copy(location)


def located(location: str) -> str:
    """A study's path as given, or its URI with the endpoint the environment names (store.with_endpoint)."""
    from .storage.store import with_endpoint

    return with_endpoint(location)


def cmd_status(args) -> int:
    from .study.status import print_status

    return print_status(local_study(located(args.study)))


def cmd_report(args) -> int:
    from .report import report_study

    study = located(args.study)
    print(report_study(study, local_study(study), Path(args.out).expanduser() if args.out else None))
    return 0


def cmd_plan(args) -> int:
    from .study.forecast import forecast
    from .study.precision import parse_until
    from .study.spec import load_spec

    spec = load_spec(args.spec, parse_overrides(args.overrides))
    if spec.until is None and args.halfwidth is None:
        raise UserError(f"{args.spec} has no until: block; give --halfwidth H (points) for its init effects")
    block = {**(spec.raw.get("until") or {}), **({"halfwidth": args.halfwidth} if args.halfwidth is not None else {})}
    spec.until, spec.effect = parse_until(block, spec.axes, spec.seeds, f"{args.spec} (with --halfwidth)")
    pilot = Path(args.pilot).expanduser() if args.pilot else None
    if pilot is not None and not pilot.is_dir():
        raise UserError(f"--from {args.pilot}: no such folder; give a study directory or a published results folder")
    for line in forecast(spec, spec.until, pilot, Path(args.storage).expanduser().resolve() / spec.name):
        print(line)
    return 0


def cmd_export(args) -> int:
    from .study.export import export

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise UserError(f"--out {args.out} is a directory; give a file name (e.g. {args.trial}.pt)")
    if problem := unwritable(out.parent):
        raise UserError(f"--out {args.out}: {problem}; choose another --out")
    print(export(local_study(located(args.study)), args.trial, out, args.epoch))
    return 0


def cmd_bench(args) -> int:
    from .trial.bench import main as bench_main

    return bench_main(args)


class VersionAction(argparse.Action):
    """`ablation --version`: the package version and the code version (git commit, .dirty if edited), which
    every run dir and study manifest records too; git runs only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__
        from .storage.provenance import code_version

        print(f"ablation {__version__} (code {code_version()})")
        parser.exit(0)


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes, like every other bad input, are one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ablation", description=__doc__.splitlines()[0])
    p.add_argument("--version", action=VersionAction, help="print the package and code version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run one trial without Ray", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config keys (key=value):\n" + defaults_table())
    t.add_argument("--config", help="YAML file of trial keys (overrides win over it)")
    t.add_argument("--out", help="run directory (required); rerunning with the same config resumes it")
    t.add_argument("overrides", nargs="*", default=[], metavar="key=value")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sweep", help="run or resume a study spec with Ray Tune")
    s.add_argument("spec", help="experiments/<study>.yaml")
    s.add_argument("--storage", default="results/studies", help="study parent dir or URI (default %(default)s)")
    s.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT (default: local Ray)")
    s.add_argument("--fresh", action="store_true",
                   help="the spec changed: move the old study aside (kept, renamed) and start over")
    s.add_argument("-v", "--verbose", action="store_true",
                   help="also print Tune's trial tables, Ray's logs and every worker's epoch lines")
    s.add_argument("--callback", action="append", default=[], metavar="mlflow|wandb|aim",
                   help="also log to this experiment tracker (repeatable): mlflow (a run per trial, continued "
                        "when the trial resumes), or Tune's wandb / aim callback (files in <storage>/wandb, "
                        "<storage>/.aim)")
    s.add_argument("--tracking-uri", default=None, help="mlflow: the tracking store (default $MLFLOW_TRACKING_URI, "
                                                        "else sqlite:///<storage>/mlflow.db)")
    s.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="spec keys, e.g. seeds=[0,1]")
    s.set_defaults(fn=cmd_sweep)

    st = sub.add_parser("status", help="one line per trial of a study")
    st.add_argument("study")
    st.set_defaults(fn=cmd_status)

    r = sub.add_parser("report", help="tables, figures and report.md of a study")
    r.add_argument("study")
    r.add_argument("--out", default=None, metavar="DIR",
                   help="write the report here instead of STUDY/report (e.g. when the study is read-only)")
    r.set_defaults(fn=cmd_report)

    pl = sub.add_parser("plan", help="the seeds, trials and compute a precision target needs, from a pilot study "
                                     "(trains nothing)")
    pl.add_argument("spec", help="experiments/<study>.yaml (its until: block, or --halfwidth for init effects)")
    pl.add_argument("overrides", nargs="*", default=[], metavar="key=value")
    pl.add_argument("--halfwidth", type=float, default=None, help="points: the 95%% half-width asked (default: "
                                                                   "the spec's until.halfwidth)")
    pl.add_argument("--from", dest="pilot", default=None, metavar="PILOT",
                    help="a study (or a published results folder) whose trials are the spec's on some seeds")
    pl.add_argument("--storage", default="results/studies", help="where the study would live (default %(default)s)")
    pl.set_defaults(fn=cmd_plan)
    e = sub.add_parser("export", help="a trial's weights as a plain torchvision resnet18 state dict")
    e.add_argument("study")
    e.add_argument("trial", help="its name, as `ablation status` lists it")
    e.add_argument("--out", required=True, metavar="FILE", help="the .pt file to write")
    e.add_argument("--epoch", default="best", help="best (its selection epoch: best val_acc, else best test_acc; "
                                                   "the default), last, or an epoch number")
    e.set_defaults(fn=cmd_export)

    b = sub.add_parser("bench", help="images/s of the harness vs a naive DataLoader vs the compute limit")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    b.add_argument("--batch-size", type=int, default=None)
    b.add_argument("--steps", type=int, default=None, help="timed steps per case")
    b.add_argument("--concurrent", type=int, default=1, help="also run K processes at once on the device")
    b.add_argument("--json", default=None, help="write one JSON object per case to this file")
    b.add_argument("--data", default="fashion-mnist", help="dataset for the harness and naive cases")
    b.add_argument("--data-dir", default="data", help="its data_dir (imagefolder: the tree or its zips)")
    b.add_argument("--warmup", type=int, default=None, help="untimed steps before each measurement")
    b.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=TrialConfig.fields()["compile_mode"].metadata["choices"], metavar="MODE",
                   help="also time each case with torch.compile (compile=true) in MODE (default; reduce-overhead "
                        "or max-autotune: CUDA graphs); its warm-up steps compile")
    for f in fields(TrialConfig):  # the trial keys themselves: their default, choices and doc
        if f.name in ("precision", "channels_last"):
            b.add_argument("--" + f.name.replace("_", "-"), default=f.default, choices=f.metadata["choices"],
                           help=f.metadata["doc"])
    b.add_argument("--cases", nargs="+", default=None,
                   help="subset of rotation-random1 rotation-all4 finetune-freeze0 finetune-freeze4 (default all)")
    b.set_defaults(fn=cmd_bench)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse gives a `key=value ...` positional only the words before the first option; the words after
    it (`sweep SPEC --storage DIR seeds=[0]`) are overrides too, anything else is an error."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in w and not w.startswith("-") for w in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _stop(signum, frame):
    """SIGTERM or SIGHUP outside a sweep's Tune run (while Ray starts, data loads, a report is written): the
    same end as Ctrl-C there (a sweep's own handler covers the run)."""
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import signal

    command_line = argv is None  # not a call from Python (tests, notebooks keep their handlers)
    if command_line:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _stop)
    try:
        return args.fn(args)
    except UserError as exc:
        print(f"ablation: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("ablation: interrupted; rerun the same command to resume", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)
    except BrokenPipeError:  # `ablation status ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if command_line:  # the command has ended (its exit code stands); only Ray's shutdown at exit is left
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
