"""Numeric summary tables of a study: one row per cell (all seeds of one configuration), percent units.

Why: the report's questions (does rotation pretraining reach its accuracy, does it help partial or full
fine-tuning) each get a table with the report's number beside ours where comparable; every other axis a
study adds (any key that varies: frames.cell_keys) becomes a column of the generic tables without a line
of code here: every cell of the study, and the pretrained - random difference per cell.
Only finished trials enter a cell (a half-trained trial's "final" accuracy is not final); `n seeds`
and `planned` say how many did. Rendering to Markdown / LaTeX lives in render.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from ..study.precision import METRICS as PRECISION_METRICS
from ..study.precision import assess, collect, extra_seeds, seeds_needed
from . import reference
from .frames import cell_keys, groups, search_only
from .stats import BOOTSTRAP_MIN, Interval, bootstrap_interval, holm, improvement, paired_test, t_interval

# In every table (its caption when constant): which study this is. task: what the data is (frames.py); a dataset
# key that varies is a cell key like any other.
SETUP = ["task", "epochs"]
INITS = ("pretrained", "random")
SUMMARY_NOTE = ("best = highest test accuracy over epochs (what the report printed); final = last epoch. "
                "Mean ± sample sd over seeds; 95% CI = Student t-interval over seeds (none with n < 2). "
                "Only finished trials count: n seeds of planned.")
EFFECT_NOTE = ("diff = pretrained - random accuracy of the same seed, in points (best or final epoch); mean ± sd "
               "and 95% t-interval over seed pairs; t, p = paired t-test (scipy.stats.ttest_rel); Holm p = p "
               "adjusted by Holm's step-down over this table's rows (several cells tested at once); none with fewer "
               "than 2 finished pairs. report = the report's pretrained - random. P(better) = share of seed pairs "
               "in which pretrained beat random (ties 1/2; Bouthillier et al. 2021), with its 95% Wilson interval "
               "(scipy.stats.binomtest). seeds for ±h = the smallest n with t(n-1) sd / sqrt(n) <= h, taking this "
               "sd as the truth: what a study asking that half-width would need (ablation plan).")


def boot_note(given: bool, some_absent: bool) -> str:
    """The table note on bootstrap intervals: what they are, and why absent where they are."""
    what = (f"boot = 95% BCa bootstrap interval of the mean (scipy.stats.bootstrap, 9999 resamples, seeded), "
            f"given from {BOOTSTRAP_MIN} seeds on: resampling fewer values says little")
    if not given:
        return f"{what}; no cell here has {BOOTSTRAP_MIN}, so none is given."
    return f"{what}; — for a cell with fewer." if some_absent else f"{what}."


@dataclass(frozen=True)
class Metric:
    label: str  # column prefix in the table
    column: str  # column of the trials frame
    scale: float = 100.0  # fractions -> percent
    reference: Callable[[dict], float] | None = None  # the report's number for a cell, NaN where none
    sample: str = "run"  # what one value is (a difference: one seed pair): the report's number is one sample


BEST = Metric("best acc (%)", "best_test_acc", reference=reference.finetune_best_acc)
FINAL = Metric("final acc (%)", "final_test_acc")
AT_VAL = Metric("at best val (%)", "test_acc_at_best_val")
VAL_NOTE = ("at best val = test accuracy at the epoch of the highest validation accuracy (val_split images held "
            "out of training): chosen without the test set, unlike best.")
ROTATION_METRICS = [Metric("best acc (%)", "best_test_acc", reference=reference.rotation_best_acc),
                    Metric("final acc (%)", "final_test_acc"),
                    Metric("lowest loss", "lowest_test_loss", 1.0, reference.rotation_lowest_loss)]
GAP_BEST = Metric("best diff (pts)", "best_test_acc", reference=reference.finetune_gap, sample="seed pair")
GAP_FINAL = Metric("final diff (pts)", "final_test_acc", sample="seed pair")
GAP_AT_VAL = Metric("at best val diff (pts)", "test_acc_at_best_val", sample="seed pair")


@dataclass
class Table:
    name: str  # file stem under report/tables/
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=lambda: [SUMMARY_NOTE])
    keys: list[str] = field(default_factory=list)  # the columns that name a row (setup and cell keys)
    metrics: tuple[Metric, ...] = ()  # whose columns the frame holds (render.notes reads their samples)

    def __post_init__(self):
        """A report column without its metric would leave the notes unable to say what the report's number is."""
        known = {f"{m.label} report" for m in self.metrics}
        unknown = [c for c in self.frame.columns if c.endswith(" report") and c not in known]
        if unknown:
            raise ValueError(f"table {self.name}: columns {unknown} have no metric in Table.metrics")


def metric_columns(metric: Metric, iv: Interval, cell: dict) -> dict:
    """mean / std / CI columns of one metric and, where the report has a number for the cell, that number
    with two flags: outside the CI of our mean, and outside the prediction interval of one run (stats.py).
    cell: every config value the cell's trials share (the report's numbers are looked up by them)."""
    out = {f"{metric.label} mean": iv.mean, f"{metric.label} std": iv.std,
           f"{metric.label} CI low": iv.low, f"{metric.label} CI high": iv.high}
    if metric.reference:
        ref, one_run = metric.reference(cell), iv.prediction()
        out.update({f"{metric.label} report": ref, f"{metric.label} report outside CI": not iv.contains(ref),
                    f"{metric.label} PI low": one_run.low, f"{metric.label} PI high": one_run.high,
                    f"{metric.label} report outside PI": not one_run.contains(ref)})
    return out


def more_columns(metric: Metric, values: pd.Series) -> dict:
    """The bootstrap interval of the mean of `values` (NaN below BOOTSTRAP_MIN of them)."""
    low, high = bootstrap_interval(values)
    return {f"{metric.label} boot low": low, f"{metric.label} boot high": high}


def _shared(rows: pd.DataFrame) -> dict:
    """The config values every one of these trials that has the key has (what the report's reference lookup
    reads): pretrain.<key> holds only for the pretrained half of an effect's pairs, and still decides it."""
    shared = {k: values.iloc[0] for k in rows.columns if (values := rows[k].dropna()).astype(str).nunique() == 1}
    if "protocol" in rows:  # each trial's whole config, its pretraining's included, is the report's (frames.py)
        shared["protocol"] = bool(rows["protocol"].all())
    return shared


def summarize(trials: pd.DataFrame, keys: list[str], metrics: list[Metric]) -> pd.DataFrame:
    """One row per cell of `keys`: n finished seeds, planned trials, and each metric's interval over seeds."""
    rows = []
    for key, cell in groups(trials, keys):
        done = cell[cell["finished"]]
        if done["seed"].duplicated().any():  # two trials of one seed in a cell: a key that varies is missing
            raise ValueError(f"cell {key} holds two trials of one seed; its keys {keys} do not separate them")
        row = {**key, "n seeds": len(done), "planned": len(cell)}
        for m in metrics:
            row.update(metric_columns(m, t_interval(done[m.column] * m.scale), _shared(cell)))
            row.update(more_columns(m, done[m.column] * m.scale))
        rows.append(row)
    return pd.DataFrame(rows)


def pretraining_effect(finetune: pd.DataFrame, keys: list[str],
                       gaps: tuple[Metric, ...] = (GAP_BEST, GAP_FINAL), halfwidth: float = 1.0) -> pd.DataFrame:
    """Pretrained - random per cell, paired by seed: mean difference, 95% CI, paired t-test and its Holm
    adjustment over the cells, P(pretrained better), the seeds a ±halfwidth interval would need. A pretrained
    cell (its pretrain.* keys included) is paired with the random-init cell that matches it on every own key."""
    keys = [k for k in keys if k != "init"]
    own = [k for k in keys if not k.startswith("pretrain.")]
    pretrained, random = (finetune[finetune["init"] == init] for init in INITS)
    rows = []
    for key, pre in groups(pretrained, keys):
        rnd = random
        for k in own:  # a key a cell lacks (NaN: trials from before it existed) matches the same lack
            rnd = rnd[(rnd[k] == key[k]) | (rnd[k].isna() & pd.isna(key[k]))]
        if rnd.empty:
            continue
        side = {init: part[part["finished"]].set_index("seed") for init, part in zip(INITS, (pre, rnd))}
        row = dict(key)
        for m in gaps:
            res = paired_test(side["pretrained"][m.column] * m.scale, side["random"][m.column] * m.scale)
            row[f"{m.label} n"] = res.diff.n  # a metric some trials lack (at best val) may have fewer pairs
            row.update(metric_columns(m, res.diff, _shared(pre)))
            row.update(more_columns(m, res.diffs))
            better, low, high = improvement(res.diffs)
            row.update({f"{m.label} t": res.t, f"{m.label} p": res.p, f"{m.label} P(better)": better,
                        f"{m.label} P(better) low": low, f"{m.label} P(better) high": high,
                        f"{m.label} seeds for ±{halfwidth:g}": seeds_needed(res.diff.std, halfwidth)})
        rows.append({**key, "n pairs": row[f"{GAP_BEST.label} n"], **row})  # the pairs the findings quote first
    frame = pd.DataFrame(rows)
    for m in gaps if len(frame) else ():  # the cells are tested together: each gap's p-values adjusted at once
        frame.insert(frame.columns.get_loc(f"{m.label} p") + 1, f"{m.label} Holm p", holm(frame[f"{m.label} p"]))
    return frame


def _keys(*groups_of_keys: list[str]) -> list[str]:
    out: list[str] = []
    for keys in groups_of_keys:
        out += [k for k in keys if k not in out]
    return out


TUNING_NOTE = ("Each cell (every axis value but the seed) searched the same configurations on its search seeds; "
               "the chosen one has the best validation score (its best epoch, mean over the search seeds, finished "
               "trials only) and runs on every seed of the study: the tables above compare the cells at their "
               "chosen configurations. stopped early = by Tune's ASHA, within the cell. The test set played no part.")


def tuning_choices(trials: pd.DataFrame, choices: dict[str, dict]) -> pd.DataFrame:
    """One row per searched cell: its chosen values and validation score (tuning.choose's, as recorded by the
    sweep), the configurations tried, and how many search trials finished or were stopped early."""
    search = trials[trials["current"] & trials["search"].fillna("").ne("")]
    rows = []
    for cell, g in search.groupby("search", sort=False):
        tuned = str(g["tuned"].iloc[0]).split(",")
        choice = choices.get(cell) or {}
        values = choice.get("values") or {}
        scale = 100.0 if choice.get("metric", "val_acc").endswith("acc") else 1.0
        rows.append({"cell": cell, **{k: values.get(k, float("nan")) for k in tuned},
                     "chosen on": choice.get("metric", "still searching" if not choice else "no trial finished"),
                     "val score": choice["score"] * scale if choice.get("score") is not None else float("nan"),
                     "configurations": g[tuned].astype(str).drop_duplicates().shape[0], "search trials": len(g),
                     "finished": int(g["finished"].sum()), "stopped early": int((g["state"] == "stopped early").sum())})
    return pd.DataFrame(rows)


PRECISION = Metric("effect (pts)", "", sample="seed pair")


def precision_note(spec) -> str:
    u = spec.until
    return (f"How the study stopped: seeds were added per cell until the 95% interval of each effect "
            f"({u.effects}: each value - {spec.baseline}, paired by seed, on "
            f"{u.metric} = {PRECISION_METRICS[u.metric]}) was within ±{u.halfwidth:g} points, at most "
            f"{u.max_seeds} seeds, by Stein's two-stage rule: the first round ({len(spec.seeds)} seeds) gives the "
            f"sd s0 of its n0 differences, which alone fixes the pairs the cell gets, N = max(n0, ceil((t(n0-1) "
            f"s0 / h)^2)) (Stein pairs, capped by max_seeds); the interval is the mean of all finished pairs ± "
            f"t(n0-1) s0 / sqrt(n), with the first round's sd (shown as ± sd). For normal differences it covers "
            f"the true effect with probability 95% whatever n the rule chose, and its half-width is at most the "
            f"target unless max_seeds capped n; the rule never looked at a p-value or at the sign of an effect. "
            f"stop = target met, max_seeds reached, waiting for seeds (the study stopped or is running before "
            f"they finished), first round running, or trials failed.")


def precision(trials: pd.DataFrame, spec) -> pd.DataFrame:
    """One row per effect of every until cell: its first round, the seeds the rule gave it, the interval it
    reached and why it stopped (precision.assess, on the trials' recorded states and scores)."""
    grouped = trials[trials["current"] & trials["group"].fillna("").ne("")]
    values = collect((r["group"], r["variant"], int(r["seed"]), r["state"], r[spec.until.metric])
                     for _, r in grouped.iterrows())
    rows = []
    for e in assess(spec.until, spec.seeds, values, dict.fromkeys(values, spec.baseline)):
        runs, base = values[e.group][e.variant], values[e.group].get(e.baseline, {})
        seeds = [*spec.seeds, *extra_seeds(spec.seeds, e.seeds - len(spec.seeds))]
        diffs = pd.Series([runs[s] - base[s] for s in seeds if runs.get(s) is not None and base.get(s) is not None],
                          dtype=float)
        better, low, high = improvement(diffs)
        label = PRECISION.label
        rows.append({"cell": e.group, "effect": f"{e.variant} - {e.baseline}", "first round pairs": e.n0,
                     "Stein pairs": e.needed or None, "seeds planned": e.seeds, "n pairs": e.n,
                     f"{label} mean": e.mean, f"{label} std": e.s0, f"{label} CI low": e.low,
                     f"{label} CI high": e.high, "half-width (pts)": e.halfwidth, "target (pts)": spec.until.halfwidth,
                     **more_columns(PRECISION, diffs), f"{label} P(better)": better,
                     f"{label} P(better) low": low, f"{label} P(better) high": high, "stop": e.reason})
    frame = pd.DataFrame(rows)
    return frame.astype({"Stein pairs": "Int64"}) if len(frame) else frame  # none while the first round runs


VARIANCE_NOTE = ("Where the data come from and how a run starts both move a result (Bouthillier et al. 2021): "
                 "data_seed draws the subsets and validation split, seed the weights, batch order and "
                 "augmentation. Per cell (every other key fixed), the final test accuracies of the seeds x "
                 "data seeds that all finished, as a two-way random-effects ANOVA without replication: each "
                 "source's variance component from its mean square less the interaction's ((MS - MS_inter) / the "
                 "other factor's count, 0 when negative), the interaction (with the noise it cannot be told from) "
                 "as MS_inter; share = of their sum. sd = the square root of a component, in points.")


def variance_sources(finetune: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell of `keys` (data_seed not among them): how much of the variance of final test accuracy comes
    from data_seed, from seed, and from neither alone, over the complete seeds x data seeds grid it finished."""
    rows = []
    for key, cell in groups(finetune[finetune["finished"]], keys):
        grid = cell.pivot_table(index="data_seed", columns="seed", values="final_test_acc", aggfunc="first") * 100
        grid = grid.dropna(axis=1)  # seeds finished under every data seed
        a, b = grid.shape
        if a < 2 or b < 2:
            continue
        y = grid.to_numpy()
        m, r, c = y.mean(), y.mean(axis=1, keepdims=True), y.mean(axis=0, keepdims=True)
        ms_data = b * ((r - m) ** 2).sum() / (a - 1)
        ms_seed = a * ((c - m) ** 2).sum() / (b - 1)
        ms_inter = ((y - r - c + m) ** 2).sum() / ((a - 1) * (b - 1))
        parts = {"data_seed": max(0.0, (ms_data - ms_inter) / b), "seed": max(0.0, (ms_seed - ms_inter) / a),
                 "interaction + noise": ms_inter}
        total = sum(parts.values())
        row = {**key, "data seeds": a, "seeds": b}
        for source, v in parts.items():
            row[f"{source} sd (pts)"] = v ** 0.5
            row[f"{source} share"] = v / total if total else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _context(notes: list[str], trials: pd.DataFrame) -> list[str]:
    """A table's notes, and where its trials depart from the report's setup, the sentence that says how."""
    context = reference.context_note(trials.to_dict("records"))
    return [*notes, context] if context else notes


def build_tables(trials: pd.DataFrame, choices: dict[str, dict] | None = None, spec=None) -> list[Table]:
    """Every table the current spec's trials support, in report order (absent data: table left out). The
    freeze 4 / freeze 0 tables are the report's protocol; the rest follow whatever keys vary. spec: the study's
    current spec (study.spec.Spec), for its until block."""
    until = spec.until if spec is not None else None
    current = trials[trials["current"] & ~search_only(trials)]  # a cell's search is its own table
    rotation = current[current["stage"] == "rotation"]
    finetune = current[current["stage"] == "finetune"]
    tables = []
    validated = "test_acc_at_best_val" in finetune and finetune["test_acc_at_best_val"].notna().any()
    metrics = [BEST, FINAL, AT_VAL] if validated else [BEST, FINAL]
    notes = [SUMMARY_NOTE, VAL_NOTE] if validated else [SUMMARY_NOTE]
    if len(rotation):
        keys = _keys(SETUP, cell_keys(rotation))
        tables.append(Table("rotation", "Rotation pretraining (predict 0/90/180/270 degrees)",
                            summarize(rotation, keys, ROTATION_METRICS), _context([SUMMARY_NOTE], rotation), keys,
                            tuple(ROTATION_METRICS)))
    ft_keys = cell_keys(finetune)
    for freeze, name, title in ((4, "finetune_partial", "Partial fine-tuning (freeze 4: layer4 + fc trained)"),
                                (0, "finetune_full", "Full fine-tuning (freeze 0: every layer trained)")):
        part = finetune[finetune["freeze"] == freeze]
        if len(part):
            keys = _keys(SETUP, [k for k in ft_keys if k != "freeze"], ["init"])
            tables.append(Table(name, title, summarize(part, keys, metrics), _context(notes, part), keys,
                                tuple(metrics)))
    if len(finetune) and (not set(ft_keys) <= {"init", "freeze"} or not set(finetune["freeze"]) <= {0, 4}):
        keys = _keys(SETUP, ft_keys, ["init"])
        tables.append(Table("finetune_cells", "Fine-tuning test accuracy, every cell of the study",
                            summarize(finetune, keys, metrics), _context(notes, finetune), keys, tuple(metrics)))
    if {"pretrained", "random"} <= set(finetune["init"]):
        keys = _keys(SETUP, ["freeze"], ft_keys)  # freeze depth always: the report's question is asked per depth
        gaps = (GAP_BEST, GAP_FINAL, GAP_AT_VAL) if validated else (GAP_BEST, GAP_FINAL)
        effect = pretraining_effect(finetune, keys, gaps, until.halfwidth if until else 1.0)
        if len(effect):
            tables.append(Table("pretraining_effect", "Effect of rotation pretraining: pretrained - random, paired by "
                                "seed (points of test accuracy)", effect, _context([EFFECT_NOTE, *notes[1:]], finetune),
                                [k for k in keys if k != "init"], gaps))
    if "data_seed" in ft_keys:
        keys = _keys(SETUP, [k for k in ft_keys if k != "data_seed"], ["init"])
        if len(frame := variance_sources(finetune, keys)):
            tables.append(Table("variance_sources", "Where the spread comes from: data sampling (data_seed) and "
                                "initialisation (seed)", frame, [VARIANCE_NOTE], keys))
    if until and "group" in trials and (frame := precision(trials, spec)).shape[0]:
        tables.append(Table("precision", f"Precision reached: each effect's 95% interval against the ±"
                            f"{until.halfwidth:g} point target", frame, [precision_note(spec)], ["cell", "effect"],
                            (PRECISION,)))
    if "search" in trials and (trials["current"] & trials["search"].fillna("").ne("")).any():
        tables.append(Table("tuning_choices", "Each cell's chosen nuisance hyperparameters (validation split)",
                            tuning_choices(trials, choices or {}), [TUNING_NOTE], keys=["cell"]))
    return tables
