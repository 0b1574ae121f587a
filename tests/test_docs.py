"""The README says what the code and the committed runs say: its config table is the code's, its quoted
figures the runs'."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ablation.config import defaults_table


def test_readme_config_table_is_defaults_table():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert defaults_table().strip() in readme


ROOT = Path(__file__).parent.parent
ONE_SEED_ROWS = {  # README's label of a one-seed row -> the label in the runs' summary.txt
    "rotation": "rotation",
    "freeze 4 (layer4 + fc), pretrained": "finetune freeze 4 pretrained",
    "freeze 4 (layer4 + fc), random": "finetune freeze 4 random",
    "freeze 0 (full), pretrained": "finetune freeze 0 pretrained",
    "freeze 0 (full), random": "finetune freeze 0 random",
}


def summary_figures(folder: str) -> dict[str, tuple[str, str, str]]:
    """(best acc, final acc, lowest loss) per run, as scripts/report_protocol.sh printed them."""
    rows = {}
    for line in (ROOT / "results" / folder / "summary.txt").read_text().splitlines():
        for label in ONE_SEED_ROWS.values():
            if line.startswith(label + " "):
                rows[label] = tuple(line[len(label):].split()[:3])
    return rows


def test_readme_one_seed_table_quotes_the_committed_runs():
    """Every figure of the README's one-seed table is the one its run printed ("(same run)": the figures of
    the first run, which the second's summary must repeat)."""
    runs = [summary_figures("protocol-cpu-seed0"), summary_figures("protocol-cpu-seed0-augment")]
    cell = re.compile(r"([\d.]+) / ([\d.]+), ([\d.]+)")
    quoted = 0
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] not in ONE_SEED_ROWS or len(cells) != 4:
            continue
        label = ONE_SEED_ROWS[cells[0]]
        for i, (text, run) in enumerate(zip(cells[1:3], runs)):
            figures = runs[0][label] if text == "(same run)" else cell.fullmatch(text).groups()
            assert figures == run[label], f"README's {cells[0]!r} column {i + 1}: {text} vs {run[label]}"
            quoted += 1
    assert quoted == 2 * len(ONE_SEED_ROWS)


SIDE_BY_SIDE = {  # README's label of a row of run B's side-by-side table -> the one-seed rows it reads
    "rotation": ("rotation",),
    "freeze 4, pretrained": ("finetune freeze 4 pretrained",),
    "freeze 4, random": ("finetune freeze 4 random",),
    "freeze 4, gap": ("finetune freeze 4 pretrained", "finetune freeze 4 random"),
    "freeze 0, pretrained": ("finetune freeze 0 pretrained",),
    "freeze 0, random": ("finetune freeze 0 random",),
    "freeze 0, gap": ("finetune freeze 0 pretrained", "finetune freeze 0 random"),
}


def test_run_b_side_by_side_table_quotes_its_report_and_the_one_seed_runs():
    """Each one-seed cell is that run's best accuracy (a gap: pretrained - random of it), each run B cell a
    mean and 95% CI of one row of results/report-cifar10's tables, so neither can drift from the runs."""
    runs = [summary_figures("protocol-cpu-seed0"), summary_figures("protocol-cpu-seed0-augment")]
    report = (ROOT / "results" / "report-cifar10" / "report.md").read_text().splitlines()
    rows = 0
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] not in SIDE_BY_SIDE or len(cells) != 6:
            continue
        best = [[float(run[label][0]) for label in SIDE_BY_SIDE[cells[0]]] for run in runs]
        expected = [f"{b[0] - b[1]:+.2f}" if len(b) == 2 else f"{b[0]:.2f}" for b in best]
        assert cells[3:5] == expected, f"README's {cells[0]!r} one-seed cells {cells[3:5]} vs the runs' {expected}"
        mean, ci = re.fullmatch(r"(\S+) (\[.+\])", cells[5]).groups()
        assert any(f"| {mean} ± " in r and f"| {ci} |" in r for r in report), f"{cells[0]!r}: {cells[5]} not in report"
        rows += 1
    assert rows == len(SIDE_BY_SIDE)


REPORT_LINK = re.compile(r"\((?:\./)?(results/[\w./-]+/report\.md)(?:#[\w-]*)?\)")


def block_quotes(readme: str) -> list[tuple[str | None, list[str]]]:
    """Every block quote of the README (a "> " line at any indent starts or continues one): the committed
    report.md its line before (blank lines aside) links, or None, and the quoted lines without their ">"."""
    quotes, source, quote = [], None, None
    for line in readme.splitlines():
        text = line.strip()
        if text.startswith(">"):
            if quote is None:
                quote = (source, [])
                quotes.append(quote)
            quote[1].append(text[1:].strip())
            continue
        if text and quote is not None:
            raise AssertionError(f"README: a quote runs on without '>' into {line!r}: put '>' on every line")
        quote = None
        if text:
            links = REPORT_LINK.findall(line)
            source = links[-1] if links else None
    return quotes


def test_readme_quotes_of_committed_reports_are_their_lines():
    """A finding quoted in the README is word for word a line of the report.md it links, so a rerun that
    changes a number cannot leave the README quoting the old one; a quote that names no report is refused."""
    quotes = block_quotes((ROOT / "README.md").read_text())
    assert quotes, "the README quotes no committed report"
    for source, lines in quotes:
        assert source, f"README quotes {lines[0]!r} without linking the report.md it comes from on the line before"
        report = {line.strip() for line in (ROOT / source).read_text().splitlines()}
        for line in lines:
            assert line in report, f"README quotes {source}, which has no line {line!r}"


def test_block_quotes_are_tied_to_the_report_linked_before_them():
    readme = ("See [it](./results/x/report.md#findings):\n\n> - a\n> - b\n\nText.\n\n  > c\n\n"
              "Plain [demo](results/demo/report.md) line\n> d\n")
    assert block_quotes(readme) == [("results/x/report.md", ["- a", "- b"]), (None, ["c"]),
                                    ("results/demo/report.md", ["d"])]
    with pytest.raises(AssertionError, match="runs on without"):
        block_quotes("[r](results/x/report.md)\n> a quote that\nwraps\n")


def test_every_test_the_docs_name_exists():
    """The README's Reliability table and DEVELOPERS.md's guarantee table name the test that holds each
    guarantee: a renamed or folded test must take its row along. (Names of tests folded away are allowed in
    DEVELOPERS.md's last column only, which says where their assertions went.)"""
    import ast

    defined = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        defined[path.name] = {n.name for n in tree.body
                              if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    for doc in ("README.md", "DEVELOPERS.md"):
        text = (ROOT / doc).read_text()
        if doc == "DEVELOPERS.md":  # the folded tests' column: the last cell of each guarantee row
            text = "\n".join(line.rsplit(" | ", 1)[0] if line.startswith("| ") else line for line in text.splitlines())
        named = re.findall(r"(test_\w+\.py)(?:::(test_\w+))?", text)
        assert named, doc
        for module, test in named:
            assert module in defined, f"{doc} names {module}, which does not exist"
            assert not test or test in defined[module], f"{doc} names {module}::{test}, which does not exist"
