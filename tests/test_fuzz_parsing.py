"""Property-based: random and mutated values of every trial key, every spec key, and malformed override strings
reach the parsing path (no training, no Ray) and are either valid or one line, exit code 2, never a traceback.

Deterministic (derandomize) and without an example database, so `make test` is repeatable and writes nothing;
a few hundred cases in all, a few seconds.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ablation.errors import ConfigError, UserError
from ablation.trial.config import TrialConfig, parse_overrides

FIELDS = TrialConfig.fields()
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "\r" not in message


# ---------------------------------------------------------------------------------------------- values


SPECIAL_TEXT = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e-999", "0x10", "1_000", " 5 ",
                "", " ", "on", "off", "yes", "no", "True", "null", "~", "0.0", "-0", "1e3", "2.5", "１２", "[1, 2]",
                "{a: 1}", "[0, 1", "{", "'", '"', "- a", "a: b: c", "&a [*a]", "!!python/object:os.system", "\t",
                "\x00", "é", "a\nb", "a\rb", "\u2028", "../..", "/dev/null", "9" * 400, "-" * 3, "=", "==", ":"]


def mutated(value):
    """Values near a valid one: its neighbours, sign, scale, type and spelling changed."""
    out = [value, str(value), repr(value), [value], {"v": value}]
    if isinstance(value, bool):
        out += [not value, int(value), str(value).upper()]
    elif isinstance(value, (int, float)):
        out += [-value, value + 1, value - 1, value * 1000, value / 3, float(value), str(value) + "x", 10 ** 30,
                -(2 ** 64), 2 ** 64]
    elif isinstance(value, str):
        out += [value.upper(), value[:-1], value + value, " " + value, value + "\n"]
    return out


def key_values(key: str):
    f = FIELDS[key]
    seeds = [f.default, *(f.metadata.get("choices") or ()), *(v for v in (f.metadata.get("lo"), f.metadata.get("hi"))
                                                               if v is not None)]
    return st.one_of(st.sampled_from([m for v in seeds for m in mutated(v)]), any_value)


any_value = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 80), max_value=2 ** 80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(SPECIAL_TEXT),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)


def mutated_key(key: str):
    return st.sampled_from([key[:-1], key + "s", key.upper(), key.replace("_", "-"), key[1:], f" {key}", key + "."])


trial_key = st.one_of(st.sampled_from(sorted(FIELDS)), st.sampled_from(sorted(FIELDS)).flatmap(mutated_key),
                      st.text(max_size=8), st.integers(0, 3))


@st.composite
def trial_dicts(draw):
    out = {}
    for key in draw(st.lists(trial_key, max_size=6, unique_by=repr)):
        out[key] = draw(key_values(key) if key in FIELDS else any_value)
    return out


# ---------------------------------------------------------------------------------------------- trial keys


@SETTINGS
@given(values=trial_dicts())
def test_trial_values_validate_or_fail_in_one_line(values):
    try:
        cfg = TrialConfig.from_dict(values, where="fuzz")
    except ConfigError as exc:
        assert one_line(str(exc)), repr(str(exc))
        return
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg  # what validated is a fixed point
    assert all(math.isfinite(v) for v in cfg.to_dict().values() if isinstance(v, float))


# ---------------------------------------------------------------------------------------------- override strings


def text_of(value) -> str:
    return value if isinstance(value, str) else str(value)


@st.composite
def override_words(draw):
    """key=value words, well-formed or not: a missing '=' or key, doubled '=', options' dashes, odd spacing."""
    key = draw(trial_key)
    value = text_of(draw(key_values(key) if key in FIELDS else any_value))
    shape = draw(st.sampled_from(["k=v", "k=v", "k=v", "k", "=v", "k==v", " k = v ", "-k=v", "--k=v", "k=v=w",
                                  "text"]))
    if shape == "text":
        return draw(st.text(max_size=16))
    return shape.replace("k", text_of(key)).replace("v", value).replace("w", value)


@SETTINGS
@given(words=st.lists(override_words(), min_size=1, max_size=4))
def test_train_command_line_validates_or_fails_in_one_line_exit_2(words):
    """`ablation train WORDS` without --out: it stops after validation (`train needs --out`) or earlier, with
    one line and exit 2. argparse may take a word as an option (an abbreviation of --out, --help): training
    is replaced by a stub, so nothing runs either way."""
    from ablation.cli import main

    err, out = io.StringIO(), io.StringIO()
    with mock.patch("ablation.trial.rundir.run", return_value=[]) as run, contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(out):
        try:
            rc = main(["train", *words])
        except SystemExit as exc:  # argparse: usage errors (2), --help (0)
            rc = exc.code
    message = err.getvalue()
    if rc == 0:
        assert run.called or any(w.startswith("-") for w in words), (words, message)
        return
    assert rc == 2, (words, message)
    assert message.count("\n") == 1 and message.endswith("\n") and message.startswith("ablation"), (words, message)
    assert "Traceback" not in message


@SETTINGS
@given(words=st.lists(override_words(), max_size=4))
def test_parse_overrides_then_from_dict(words):
    try:
        values = parse_overrides(words)
        TrialConfig.from_dict(values, where="train")
    except ConfigError as exc:
        assert one_line(str(exc)), repr(str(exc))


# ---------------------------------------------------------------------------------------------- spec keys


SPEC_KEYS = ["name", "description", "pretrain", "finetune", "resources", "max_failures", "max_concurrent", "seeds",
             "init", "freeze", "labels_per_class", "finetune_lr", "stem", "axes"]
BLOCK_KEYS = ["pretrain.epochs", "pretrain.lr", "pretrain.augment", "finetune.epochs", "finetune.lr",
              "finetune.batch_size", "resources.cpu", "resources.gpu", "pretrain.seed", "finetune.bogus"]
BASE_SPEC = {"name": "t", "dataset": "fashion-mnist", "train_subset": 128, "test_subset": 64, "batch_size": 64,
             "device": "cpu", "pretrain": {"epochs": 2}, "finetune": {"epochs": 2}, "seeds": [0, 1],
             "init": ["pretrained", "random"], "freeze": [4, 0], "resources": {"cpu": 1, "gpu": 0}}
spec_key = st.one_of(st.sampled_from(SPEC_KEYS + BLOCK_KEYS + sorted(FIELDS)),
                     st.sampled_from(SPEC_KEYS).flatmap(mutated_key), st.text(max_size=8))
yaml_value = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
                       st.lists(st.one_of(st.integers(-2, 6), st.sampled_from(["pretrained", "random", "x"]),
                                          st.floats()), max_size=4),
                       st.dictionaries(st.sampled_from(["epochs", "lr", "cpu", "gpu", "x"]),
                                       st.one_of(st.integers(-2, 5), st.floats(), st.text(max_size=4)), max_size=3),
                       st.dictionaries(st.sampled_from(["finetune.weight_decay", "pretrain.epochs", "rotation_mode",
                                                        "seed", "init", "bogus.lr", "finetune.", "lr"]),
                                       st.one_of(st.lists(st.one_of(st.floats(), st.integers(-2, 5),
                                                                    st.sampled_from(["all4", "x"])), max_size=3),
                                                 st.integers(), st.text(max_size=4)), max_size=3))


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-spec")


def check_load_spec(path: Path, overrides: dict[str, str]) -> None:
    from ablation.study.spec import load_spec

    try:
        load_spec(str(path), overrides)
    except UserError as exc:
        assert one_line(str(exc)), repr(str(exc))


@SETTINGS
@given(data=st.data())
def test_spec_files_load_or_fail_in_one_line(spec_dir, data):
    """Every spec key set to a random or mutated value in the YAML file itself."""
    raw = dict(BASE_SPEC)
    for key in data.draw(st.lists(spec_key, min_size=1, max_size=4, unique=True)):
        raw[key] = data.draw(yaml_value)
    path = spec_dir / "s.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    check_load_spec(path, {})


@SETTINGS
@given(data=st.data())
def test_spec_overrides_load_or_fail_in_one_line(spec_dir, data):
    """`ablation sweep SPEC key=value ...` overrides of every spec key, as the command line gives them (text,
    read as YAML), malformed YAML included."""
    path = spec_dir / "base.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(BASE_SPEC))
    words = data.draw(st.lists(st.builds(lambda k, v: f"{k}={v}", spec_key,
                                         st.one_of(st.sampled_from(SPECIAL_TEXT), yaml_value.map(str))),
                               min_size=1, max_size=3))
    try:
        overrides = parse_overrides(words)
    except ConfigError as exc:
        assert one_line(str(exc))
        return
    check_load_spec(path, overrides)
