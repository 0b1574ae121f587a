"""`ablation sweep`: spec -> planned trials -> Ray Tune, for the trials that are not finished yet.

Why: a grid on a GPU box gets interrupted, and grows. Running the same command again, or an edited spec,
continues the study: trials already finished (same config digest) are reused, interrupted ones continue
from their own checkpoints (rundir.py), only new configs train. Each invocation is a fresh Tune run, so
Tune's experiment state never has to match an edited spec; the study directory (records.py) is the record.
One Tune run per invocation starts each trial once its dependency is done (launch.py); with a tune block,
each cell's search runs first and its chosen configuration is planned when the search is done (tuning.py).
<storage> is a local or shared path or a URI (store.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ..errors import Stopped, UserError
from ..storage import provenance, store
from ..storage.files import unwritable
from ..storage.store import Location
from ..study import records
from ..study.decisions import plan_study, search_history
from ..study.planner import Trial, trial_dir
from ..study.spec import Spec, load_spec
from ..study.trial_states import DONE
from ..trial.rundir import mark_stopped
from .console import say


def warn(msg: str) -> None:
    print(f"ablation: warning: {msg}", file=sys.stderr, flush=True)


def run_study(spec_path: str, storage: str = "results/studies", address: str | None = None, fresh: bool = False,
              overrides: dict[str, str] | None = None, verbose: bool = False, callbacks: list[str] = (),
              tracking_uri: str | None = None) -> int:
    spec = load_spec(spec_path, overrides)
    if not store.is_uri(storage) and (problem := unwritable(Path(storage).expanduser() / spec.name)):
        raise UserError(f"--storage {storage}: {problem}; give a directory you can write")
    if store.is_uri(storage):
        storage = store.with_endpoint(storage)
        store.check_reachable(storage)
    study_dir = store.child(storage if store.is_uri(storage) else Path(storage).expanduser().resolve(), spec.name)
    trackers = []
    if callbacks:  # a missing package fails before any work
        from .trackers import tracker_callbacks, tracker_home
        from .trackers import tracking_uri as tracker_uri

        home = tracker_home(storage)
        trackers = tracker_callbacks(callbacks, spec.name, tracker_uri(tracking_uri, home), study_dir, home)
    address = resolve_address(address)
    old = records.check_claim(study_dir, fresh)
    trials, choices, _ = plan_study(spec, study_dir, fresh=fresh)
    from ..trial.data import preflight  # torch: only once the spec is known to be good

    data = preflight([t.config for t in trials])  # missing data fails before anything is written
    records.check_data(study_dir, old, data)
    gpu, slots = _start_ray(address, spec, verbose)
    with _stop_signals() as stop, _storage_lost(study_dir):  # after ray.init, which installs its own handlers
        code = _sweep(spec, spec_path, study_dir, old, trials, choices, data, fresh, address, gpu, slots, verbose,
                      trackers)
    return 128 + stop.signum if code == 130 and stop.signum else code


@contextlib.contextmanager
def _storage_lost(study_dir: Location):
    """Object storage that stops answering mid-sweep (an outage, expired credentials): Tune fails the trials
    that could not write and the driver's own last writes fail; one line names the storage instead of two
    tracebacks. Everything the storage holds is kept: the same command resumes once it answers again."""
    try:
        yield
    except (ConnectionError, TimeoutError):  # a closed pipe on the console, Ray's own timeouts: not the storage
        raise
    except Exception as exc:
        if not (store.is_storage_error(exc) and store.is_remote(study_dir)):
            raise
        raise UserError(f"{study_dir}: the storage failed during the sweep ({store.reason(exc)}); what it holds is "
                        f"kept: rerun the same command when it answers again") from None


def _sweep(spec: Spec, spec_path: str, study_dir: Location, old, trials: list[Trial], choices: dict, data,
           fresh: bool, address: str | None, gpu: float, slots: float, verbose: bool, trackers: list) -> int:
    """run_study once Ray is up: the study claimed and recorded, one Tune run, its end said and recorded."""
    if address and not store.is_uri(study_dir):
        from .nodes import check_nodes

        check_nodes(Path(study_dir).parent, [t.config for t in trials])
    if fresh and store.exists(study_dir):  # after the checks: a node that fails one leaves the old study in place
        warn(f"--fresh: moved the old study to {records.move_aside(Path(study_dir))} (nothing deleted); starting over")
    manifest = records.begin(study_dir, spec, spec_path, trials, data, old, slots)
    records.add_trials(study_dir, manifest, [], choices, reopened={t.search for t in trials if t.search})
    recorded = {r["key"]: r for r in records.trial_records(study_dir, manifest)}
    done = {k for k, r in recorded.items() if r["state"] in DONE}
    todo = [t for t in trials if t.key not in done]
    run = manifest["invocations"][-1]
    name = records.run_name(len(manifest["invocations"]))
    log = records.log_location(study_dir, len(manifest["invocations"]))
    say(f"study {spec.name}: {len(trials)} trials in the spec: {len(done & {t.key for t in trials})} finished "
        f"(reused), {len(todo)} to train ({len(run['added'])} new) on {slots:g} slot{'s' * (slots != 1)} -> "
        f"{study_dir}")
    if todo:
        say(f"log: {log} (-v prints Tune's tables and every epoch here)")
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    unfinished: int | None = None
    interrupted = False
    try:
        left = {t.key: t.config.epochs - len(recorded[t.key]["rows"]) for t in todo}  # epochs still to train
        failed, skipped, interrupted = run_tune(study_dir, name, todo, done, spec, gpu, verbose, trackers, log, left,
                                                manifest, slots)
        unfinished = unfinished_trials(study_dir, failed, skipped)
    finally:
        records.end(study_dir, manifest, failed, skipped, unfinished, interrupted)
    problems, code = closing(spec.name, study_dir, [manifest["trials"][k]["name"] for k in failed], skipped,
                             unfinished, interrupted)
    for line in problems:
        print(line, file=sys.stderr)
    if not code:
        say(f"study {spec.name} finished; next: ablation report {study_dir}")
    return code


def closing(name: str, study_dir: Location, failed: list[str], skipped: dict[str, str], unfinished: int,
            interrupted: bool) -> tuple[list[str], int]:
    """What a sweep says on stderr as it ends, and its exit code: 0 when every planned trial is done, 130 when
    a stop signal (Ctrl-C; Tune returns quietly then) left trials unfinished, else 1."""
    lines = []
    if failed or skipped:
        parts = ([f"{len(failed)} trial(s) failed after retries: {', '.join(failed)}"] if failed else []) + \
            ([f"{len(skipped)} skipped ({next(iter(skipped.values()))})"] if skipped else [])
        lines.append("ablation: " + "; ".join(parts) + f"; see `ablation status {study_dir}` and Tune's error.txt "
                     f"under {store.child(study_dir, 'tune')}, then rerun the same command to retry them")
    if unfinished:  # the trials' own files say what is left
        lines.append(f"ablation: study {name} " + ("stopped" if interrupted else "ended, with no stop signal "
                                                   "(unexpected: please report it),") + f" with {unfinished} planned "
                     f"trial(s) unfinished (every finished epoch is kept); rerun the same command to "
                     f"{'resume' if interrupted else 'train them'}")
        return lines, 130 if interrupted else 1
    return lines, 1 if lines else 0


def unfinished_trials(study_dir: Location, failed: dict[str, str], skipped: dict[str, str]) -> int:
    """How many of the current spec's trials are not done and did not fail or get skipped."""
    return sum(1 for r in records.trial_records(study_dir) if r["current"] and r["state"] not in DONE
               and r["key"] not in failed and r["key"] not in skipped)


def resolve_address(address: str | None, timeout: float = 5.0) -> str | None:
    """--address as a HOST:PORT that answers, or None for a private local Ray. `auto` is the cluster this
    machine belongs to (RAY_ADDRESS, else the one `ray start` recorded), never another program's private Ray:
    Ray's own `auto` falls back to any Ray it finds running, and a second sweep would join the first's. A
    HOST:PORT that nothing answers on is one line now: Ray itself retries for minutes."""
    if address is None:
        return None
    if address == "auto":
        from ray._common.utils import get_ray_address_file

        recorded = Path(get_ray_address_file(None))
        address = os.environ.get("RAY_ADDRESS") or (recorded.read_text().strip() if recorded.exists() else "")
        if not address:
            raise UserError("--address auto: this machine belongs to no Ray cluster (none started with `ray start` "
                            "here, RAY_ADDRESS unset; another program's private Ray is never joined); start one "
                            "with `ray start --head`, give its HOST:PORT, or leave --address out for a local Ray")
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--address {address}: not HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"--address {address}: no Ray head answers there ({exc.strerror or exc}); start one with "
                        f"`ray start --head` or check the host and port") from None
    if not address.startswith("ray://") and (problem := _not_ray(address, timeout)):
        raise UserError(f"--address {address}: something listens there, but no Ray head ({problem}); give the "
                        f"address `ray start --head` printed")
    return address


GCS_PROBE = ("import sys; from ray._raylet import GcsClient; "
             "GcsClient(address=sys.argv[1]).internal_kv_get(b'session_name', b'session', timeout=3)")


def _not_ray(address: str, timeout: float) -> str:
    """Why a Ray head's GCS does not answer at address ("" when it does). A process of its own (~0.5 s): Ray's
    C++ client logs each of its retries for ~25 s on stderr before ray.init gives up."""
    import subprocess

    try:
        probe = subprocess.run([sys.executable, "-c", GCS_PROBE, address], capture_output=True, text=True,
                               timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"no Ray answer within {timeout:g} s"
    lines = [line for line in probe.stderr.splitlines() if line.strip()]
    return "" if probe.returncode == 0 else (lines[-1].strip() if lines else f"exit code {probe.returncode}")


class _Drop(logging.Filter):
    """Drops the log records whose message contains this text."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class _Seen(logging.Filter):
    """Passes every record on, and notes whether one contained this text since `seen` was last reset."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.seen = text, False

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen = self.seen or self.text in record.getMessage()
        return True


# On Ctrl-C Tune lists the trials that never started as "Failed to fetch metrics" (nothing failed), and advises
# Tuner.restore(...): wrong here, where rerunning the same command resumes (run_study says so).
NO_FETCH_WARNING = _Drop("Failed to fetch metrics")
NO_RESTORE_ADVICE = _Drop("Resume experiment with: Tuner.restore")
# Tune's handler of SIGINT and SIGUSR1 replaces any other and says only this: what tells a stop from a run that
# left trials unfinished by itself (a bug, which must not be called a Ctrl-C)
STOP_SIGNAL = _Seen("Stop signal received")
# A crashed trial's traceback (~40 lines, at each retry) and Tune's list of the trials that did not complete:
# progress.py says each in a line naming the exception and the study's copy of the traceback
NO_TRIAL_TRACEBACK = _Drop("Trial task failed for trial")
NO_INCOMPLETE_LIST = _Drop("Trials did not complete")
# Ray's note, at every start where ~/.ray/auth_token exists, that the driver's own private Ray uses it
NO_TOKEN_NOTE = _Drop("Token authentication is enabled for this Ray cluster")
# "The `on_step_begin` operation took 1.3 s, which may be a performance bottleneck": Tune's timing of its own
# loop on a busy machine, a line every few minutes of a long study that the user cannot act on
NO_BOTTLENECK_NOTE = _Drop("may be a performance bottleneck")


def _start_ray(address: str | None, spec: Spec, verbose: bool = False) -> tuple[float, float]:
    """Join or start Ray; a GPU request with no GPU in the cluster is dropped (Ray would wait forever).
    Returns the GPU fraction per trial and how many trials the cluster runs at once. Unless verbose, the
    workers' own lines and Ray's and Tune's info logs stay out of the console (progress.py prints instead)."""
    import ray

    if not verbose:
        for name in ("ray", "ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("ray.tune.utils.util").addFilter(NO_BOTTLENECK_NOTE)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's new console output prints its banner even at verbose=0
        logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(NO_FETCH_WARNING)
        logging.getLogger("ray.tune.execution.tune_controller").addFilter(NO_TRIAL_TRACEBACK)
        logging.getLogger("ray.tune.tune").addFilter(NO_INCOMPLETE_LIST)
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(NO_TOKEN_NOTE)
    for tune_filter in (NO_RESTORE_ADVICE, STOP_SIGNAL):  # the same filter twice is added once
        logging.getLogger("ray.tune.tune").addFilter(tune_filter)
    if not ray.is_initialized():
        with _stop_signals_held():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
                         logging_level=logging.INFO if verbose else logging.WARNING)
            except ConnectionError as exc:  # address=auto with no cluster running
                raise UserError(f"--address {address}: {str(exc).splitlines()[0]}; start one with `ray start "
                                f"--head` or leave --address out for a local Ray") from None
    have = ray.cluster_resources()
    gpu = spec.gpu
    if gpu and not have.get("GPU", 0):
        warn(f"resources.gpu={gpu} asked, but this Ray cluster has no GPU: running every trial on CPU")
        gpu = 0.0
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
    if spec.cpu > largest:  # a trial runs on one node: Tune would keep every trial pending, silently
        problem = (f"resources.cpu={spec.cpu:g} per trial, but the largest Ray node has {largest:g} CPUs, so no "
                   f"trial could start; ask for at most resources={{cpu: {largest:g}}}")
        if address is None:  # a local Ray is the whole machine
            raise UserError(problem)
        warn(f"{problem}, or add a node that large (the trials wait for one)")
    slots = fits(have.get("CPU", 1), spec.cpu)
    if gpu:  # a fractional trial lives on one GPU: each whole GPU holds fits(1, gpu) of them
        slots = min(slots, int(have["GPU"]) * fits(1.0, gpu))
    if spec.max_concurrent:
        slots = min(slots, spec.max_concurrent)
    return gpu, max(1, slots)


@contextlib.contextmanager
def _stop_signals_held():
    """SIGTERM or SIGHUP while ray.init runs stops the sweep once Ray is up (Stopped: exit 128 + its number).
    Let through, it ends the driver mid-connection: Ray's own handler (sys.exit, installed by ray.init) leaves
    a half-made core worker that segfaults at exit (139), and Ray's C++ failure handler, which takes SIGTERM
    from the moment that worker starts, aborts (134) with a stack dump. That handler is turned off for the
    driver only (read when its core worker starts; workers keep theirs)."""
    import ray

    ray._private.ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    if threading.current_thread() is not threading.main_thread():  # signal.signal works there only
        yield
        return
    held: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: held.append(signum))
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    set_sigterm_handler = ray._private.utils.set_sigterm_handler
    ray._private.utils.set_sigterm_handler = lambda handler: None  # ray.init's sys.exit handler: not now
    try:
        yield
    finally:
        ray._private.utils.set_sigterm_handler = set_sigterm_handler
        for sig, handler in handlers.items():  # ours (cli.py) come back
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if held:
        raise Stopped(held[0])


def fits(total: float, share: float) -> int:
    """How many trials asking `share` of a resource fit in `total` of it, counted as Ray counts (in units of
    1e-4): in floating point 1 // 0.1 is 9, and ten trials of gpu: 0.1 fit on one GPU."""
    return int(round(total * 10_000)) // max(1, int(round(share * 10_000)))


def run_tune(study_dir: Location, name: str, trials: list[Trial], done: set[str], spec: Spec, gpu: float,
             verbose: bool, trackers: list, log: Location, left: dict[str, int], manifest: dict,
             slots: float) -> tuple[dict[str, str], dict[str, str], bool]:
    """One Tune run over these trials (left: key -> epochs still to train), each started as soon as its
    dependency has finished (launch.py). Returns ({key: Tune's error file} of trials that failed, {key: why}
    of trials skipped because of them, whether a stop signal (Ctrl-C) ended the run)."""
    if not trials:
        return {}, {}, False
    from ray import tune

    from .launch import DependencySearcher, SearchScheduler, TrialParam, trial_param, work
    from .progress import Progress
    from .trainable import run_trial

    if not store.is_uri(study_dir):
        Path(study_dir, records.LOGS_DIR).mkdir(parents=True, exist_ok=True)
    def to_train(trials: list[Trial], epochs) -> dict[str, tuple[int, float]]:
        """What Progress counts: name -> (epochs to train, relative cost of one)."""
        return {t.name: (epochs(t), work(t) / t.config.epochs) for t in trials}

    progress = Progress(to_train(trials, lambda t: left[t.key]), log,
                        elapsed=provenance.since(manifest["invocations"][-1]["started"]))
    searching: dict[str, set[str]] = {}
    for t in trials:
        if t.search:
            searching.setdefault(t.search, set()).add(t.key)
    stopped_keys: set[str] = set()
    planned_keys = {t.key for t in trials} | set(done)  # in this run so far: what expand and grow add is new

    def replan(failed: set[str]) -> tuple[dict, list[Trial]]:
        """Plan again from the trials' files (a search's choice, an until cell's seeds): every trial the plan
        holds that this invocation's record lacks, or whose role changed, is recorded (finished ones too: a
        rerun that retried a first-round trial decides again, and the seeds it keeps must stay current), and
        those not yet in this run go to the searcher. Returns (choices, the new trials)."""
        planned, choices, assessed = plan_study(spec, study_dir, failed)
        run = manifest["invocations"][-1]
        changed = [t for t in planned if t.key not in run["planned"]
                   or manifest["trials"].get(t.key) != records.trial_entry(t)]
        records.add_trials(study_dir, manifest, changed, choices)
        new = [t for t in planned if t.key not in planned_keys]
        planned_keys.update(t.key for t in new)
        progress.add(to_train(new, lambda t: t.config.epochs))
        grown = {t.group for t in new if t.group}
        for e in assessed if grown else ():
            if e.group in grown:
                capped = e.seeds == spec.until.max_seeds and e.needed > e.seeds
                progress.event(f"seeds    {e.group}: {e.variant} - {e.baseline}: first round sd {e.s0:.2f} pts; "
                               f"Stein's rule asks for {e.needed} pairs for ±{spec.until.halfwidth:g}: {e.seeds} "
                               f"seeds{' (max_seeds)' if capped else ''}")
        return choices, new

    def expand(cell: str, failed: set[str]) -> list[Trial]:
        """The cell's search is done: plan its choice (and, with an until block, any seeds decided by it)."""
        choices, new = replan(failed)
        choice = choices.get(cell)
        if choice is None or not choice.get("values"):
            progress.event(f"no choice for {cell}: " + ("a search trial ended unfinished; rerun to finish it"
                                                         if choice is None else "no search trial finished"))
            return new
        progress.event(f"chose    {cell}: {choice['values']} ({choice['metric']} {choice['score']:.4f}, "
                       f"{choice['tried']} tried, {choice['stopped']} stopped early); {len(new)} trial(s) to train")
        return new

    def grow(trial: Trial, failed: set[str]) -> list[Trial]:
        """A trial of an until cell ended: when it was the last of its cell's first round, the cell's seeds
        are decided (precision.py) and the trials they need join the run (and the study's record)."""
        return replan(failed)[1] if trial.config.seed in spec.seeds else []  # only the first round decides

    def stop(key: str, epoch: int) -> None:
        stopped_keys.add(key)
        mark_stopped(trial_dir(study_dir, by_key[key]), epoch, "asha")

    by_key = {t.key: t for t in trials}
    searcher = DependencySearcher(trials, done, lambda t: TrialParam(
        key=t.key, name=t.name, config=t.config.to_dict(), dir=str(trial_dir(study_dir, t)), cpu=spec.cpu, gpu=gpu,
        search=t.search), searching, expand, stopped_keys,
        lambda t, why: progress.skip(t.name, why), grow if spec.until else None)
    scheduler = None
    if spec.tune and spec.tune.scheduler == "asha":
        scheduler = SearchScheduler(spec.tune, search_history(spec, study_dir), stop)
    seeds = next(a.values for a in spec.axes if a.key == "seed")
    bound = len(trials) + len(searching) * len(seeds)  # + each searching cell's choice on every seed
    if spec.until:  # + every cell's extra seeds at most, each with its rotation trial
        per_seed = sum(1 for t in plan_study(spec, study_dir).trials if t.config.seed == seeds[0]) + len(searching)
        bound += (spec.until.max_seeds - len(seeds)) * per_seed
    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"cpu": spec.cpu, "gpu": gpu}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=bound, reuse_actors=True,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                                    max_concurrent_trials=spec.max_concurrent or None),
        run_config=tune.RunConfig(name=name, storage_path=str(store.child(study_dir, records.TUNE_DIR)),
                                  verbose=1 if verbose else 0, callbacks=[progress, *trackers],
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures)),
    )
    STOP_SIGNAL.seen = False
    with _pending_trials(slots), _sigint_restored():
        results = tuner.fit()
    failed = {trial_param(r)["key"]: f"{r.path}/error.txt" for r in results if r.error}
    return failed, searcher.skipped, STOP_SIGNAL.seen


@contextlib.contextmanager
def _pending_trials(slots: float):
    """Tune lets a custom searcher keep one trial pending at a time: the slots would start one by one, each
    after the last one's worker came up (~2 s apart here). As many pending trials as slots start them at once.
    For this fit only (a long-lived process may sweep again with other slots); a user's own setting wins."""
    mine = "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ
    if mine:
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max(1, int(slots)))
    try:
        yield
    finally:
        if mine:
            os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)


class _Stop:
    signum = 0  # the stop signal received other than SIGINT (SIGTERM, SIGHUP), 0 if none


@contextlib.contextmanager
def _stop_signals():
    """SIGTERM (a batch scheduler's preemption, a container stop) and SIGHUP (a closed terminal) stop the sweep
    as Ctrl-C does: each is passed on as SIGINT to Tune's handler during the fit, and raised as Stopped when no
    fit listens, so every finished epoch is kept and the same line says how to resume; the exit code is 128 +
    the signal's number."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():  # signal.signal works there only
        yield stop
        return

    def forward(signum, frame):
        stop.signum = signum
        if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL, None):
            raise Stopped(signum)  # no Tune fit listening; SIGINT may be ignored (`ablation sweep ... &` in a script)
        os.kill(os.getpid(), signal.SIGINT)

    before = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield stop
    except KeyboardInterrupt as exc:  # the SIGINT passed on came outside Tune's fit (Python's own handler took it)
        if stop.signum and not isinstance(exc, Stopped):
            raise Stopped(stop.signum) from None
        raise
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _sigint_restored():
    """Tune installs its own SIGINT handler for the fit and leaves it there when the fit ends normally: a
    Ctrl-C after it would be swallowed (and taken for a stop of the run). The process's own comes back."""
    main = threading.current_thread() is threading.main_thread()  # signal.signal works there only
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)


def _trial_name(trial) -> str:
    from .launch import trial_param  # ray: only once a sweep runs

    return trial_param(trial)["name"]
