"""The docs say what the code and the committed runs say: the README's config table is the code's, its answer
table the committed CIFAR-10 report's; the study's own README (results/report-cifar10/README.md) quotes its
tables and the one-seed runs; quotes of a report.md are its lines; named tests exist; relative links resolve."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from ablation.trial.config import defaults_table


def test_readme_config_table_is_defaults_table():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert defaults_table().strip() in readme


ROOT = Path(__file__).parent.parent
STUDY_README = ROOT / "results" / "report-cifar10" / "README.md"  # how the CIFAR-10 study ran, beside its results
CIFAR_REPORT = ROOT / "results" / "report-cifar10" / "report.md"
DOCS = ("README.md", "DEVELOPERS.md", "CHANGELOG.md", "docs/performance.md", "results/report-cifar10/README.md")
ONE_SEED_ROWS = {  # the study README's label of a one-seed row -> the label in the runs' summary.txt
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


def table_rows(doc: Path) -> list[list[str]]:
    """Every Markdown table row of a doc, as its stripped cells."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in doc.read_text().splitlines() if line.lstrip().startswith("|")]


ANSWER_ROWS = {  # the README's answer table: report vs the 3-seed CIFAR-10 study
    "rotation (predict 0/90/180/270 degrees)", "freeze 4 (layer4 + fc), pretrained",
    "freeze 4 (layer4 + fc), random init", "freeze 4, gap", "freeze 0 (full), pretrained",
    "freeze 0 (full), random init", "freeze 0, gap"}


def test_readme_answer_table_quotes_the_committed_cifar10_report():
    """Each row of the README's answer is one row of results/report-cifar10/report.md: the same mean and 95% CI
    of ours and the same report number (with its dagger, if any), so neither can drift from the study."""
    report = CIFAR_REPORT.read_text().splitlines()
    rows = 0
    for cells in table_rows(ROOT / "README.md"):
        if cells[0] not in ANSWER_ROWS:
            continue
        assert len(cells) == 3, f"README's answer row {cells[0]!r}: {cells}"
        theirs, ours = cells[1:]
        mean, ci = re.fullmatch(r"(\S+) (\[.+\])", ours).groups()
        mark = re.compile(rf"\| {re.escape(theirs)}[†‡]? \|")
        assert any(f"| {mean} ± " in r and f"| {ci} |" in r and mark.search(r) for r in report), \
            f"README's answer row {cells[0]!r} ({theirs} vs {ours}) is no row of {CIFAR_REPORT.relative_to(ROOT)}"
        rows += 1
    assert rows == len(ANSWER_ROWS), f"README's answer table has {rows} of its {len(ANSWER_ROWS)} rows"


def test_study_readme_one_seed_table_quotes_the_committed_runs():
    """Every figure of the CIFAR-10 study README's one-seed table is the one its run printed ("(same run)": the
    figures of the first run, which the second's summary must repeat)."""
    runs = [summary_figures("protocol-cpu-seed0"), summary_figures("protocol-cpu-seed0-augment")]
    cell = re.compile(r"([\d.]+) / ([\d.]+), ([\d.]+)")
    quoted = 0
    for cells in table_rows(STUDY_README):
        if cells[0] not in ONE_SEED_ROWS or len(cells) != 4:
            continue
        label = ONE_SEED_ROWS[cells[0]]
        for i, (text, run) in enumerate(zip(cells[1:3], runs)):
            figures = runs[0][label] if text == "(same run)" else cell.fullmatch(text).groups()
            assert figures == run[label], f"study README's {cells[0]!r} column {i + 1}: {text} vs {run[label]}"
            quoted += 1
    assert quoted == 2 * len(ONE_SEED_ROWS)


SIDE_BY_SIDE = {  # the study README's label of a row of its side-by-side table -> the one-seed rows it reads
    "rotation": ("rotation",),
    "freeze 4, pretrained": ("finetune freeze 4 pretrained",),
    "freeze 4, random": ("finetune freeze 4 random",),
    "freeze 4, gap": ("finetune freeze 4 pretrained", "finetune freeze 4 random"),
    "freeze 0, pretrained": ("finetune freeze 0 pretrained",),
    "freeze 0, random": ("finetune freeze 0 random",),
    "freeze 0, gap": ("finetune freeze 0 pretrained", "finetune freeze 0 random"),
}


def test_study_readme_side_by_side_table_quotes_its_report_and_the_one_seed_runs():
    """Each one-seed cell is that run's best accuracy (a gap: pretrained - random of it), each 3-seed cell a
    mean and 95% CI of one row of results/report-cifar10's tables, so neither can drift from the runs."""
    runs = [summary_figures("protocol-cpu-seed0"), summary_figures("protocol-cpu-seed0-augment")]
    report = CIFAR_REPORT.read_text().splitlines()
    rows = 0
    for cells in table_rows(STUDY_README):
        if cells[0] not in SIDE_BY_SIDE or len(cells) != 6:
            continue
        best = [[float(run[label][0]) for label in SIDE_BY_SIDE[cells[0]]] for run in runs]
        expected = [f"{b[0] - b[1]:+.2f}" if len(b) == 2 else f"{b[0]:.2f}" for b in best]
        assert cells[3:5] == expected, f"{cells[0]!r}: one-seed cells {cells[3:5]} vs the runs' {expected}"
        mean, ci = re.fullmatch(r"(\S+) (\[.+\])", cells[5]).groups()
        assert any(f"| {mean} ± " in r and f"| {ci} |" in r for r in report), f"{cells[0]!r}: {cells[5]} not in report"
        rows += 1
    assert rows == len(SIDE_BY_SIDE)


REPORT_LINK = re.compile(r"\((?:\./)?((?:\.\./)*(?:[\w.-]+/)*report\.md)(?:#[\w-]*)?\)")
QUOTING_DOCS = ("README.md", "results/report-cifar10/README.md")  # docs that quote a committed report.md


def block_quotes(readme: str) -> list[tuple[str | None, list[str]]]:
    """Every block quote of a doc (a "> " line at any indent starts or continues one): the report.md its line
    before (blank lines aside) links, relative to the doc, or None, and the quoted lines without their ">"."""
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


@pytest.mark.parametrize("doc", QUOTING_DOCS)
def test_quotes_of_committed_reports_are_their_lines(doc):
    """A finding quoted in the README or a study's README is word for word a line of the report.md it links,
    so a rerun that changes a number cannot leave a doc quoting the old one; a quote that names no report is
    refused."""
    quotes = block_quotes((ROOT / doc).read_text())
    assert quotes, f"{doc} quotes no committed report"
    for source, lines in quotes:
        assert source, f"{doc} quotes {lines[0]!r} without linking the report.md it comes from on the line before"
        path = (ROOT / doc).parent / source
        assert path.resolve().is_relative_to(ROOT / "results"), f"{doc} quotes {source}, not a committed result"
        report = {line.strip() for line in path.read_text().splitlines()}
        for line in lines:
            assert line in report, f"{doc} quotes {source}, which has no line {line!r}"


def test_block_quotes_are_tied_to_the_report_linked_before_them():
    readme = ("See [it](./results/x/report.md#findings):\n\n> - a\n> - b\n\nText.\n\n  > c\n\n"
              "Plain [demo](results/demo/report.md) line\n> d\n\nBeside it: [report.md](report.md)\n> e\n")
    assert block_quotes(readme) == [("results/x/report.md", ["- a", "- b"]), (None, ["c"]),
                                    ("results/demo/report.md", ["d"]), ("report.md", ["e"])]
    with pytest.raises(AssertionError, match="runs on without"):
        block_quotes("[r](results/x/report.md)\n> a quote that\nwraps\n")


def test_every_test_the_docs_name_exists():
    """The README's Reliability table and DEVELOPERS.md's guarantee table name the test that holds each
    guarantee, and the other docs may name tests too: a renamed or folded test must take its row along. (Names
    of tests folded away are allowed in DEVELOPERS.md's last column only, which says where their assertions
    went.)"""
    import ast

    defined = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        defined[path.name] = {n.name for n in tree.body
                              if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        if doc == "DEVELOPERS.md":  # the folded tests' column: the last cell of each guarantee row
            text = "\n".join(line.rsplit(" | ", 1)[0] if line.startswith("| ") else line for line in text.splitlines())
        named = re.findall(r"(test_\w+\.py)(?:::(test_\w+))?", text)
        assert named or doc not in ("README.md", "DEVELOPERS.md"), doc
        for module, test in named:
            assert module in defined, f"{doc} names {module}, which does not exist"
            assert not test or test in defined[module], f"{doc} names {module}::{test}, which does not exist"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {anchor(line.lstrip("#")) for line in doc.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def broken_links(doc: Path) -> list[str]:
    """The relative links of a doc whose file (or heading, after #) does not exist in the repository."""
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.is_relative_to(ROOT) or not file.exists():
            broken.append(target)
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(target)
    return broken


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_in_the_docs_resolve(doc):
    assert not broken_links(ROOT / doc), f"{doc}: links to nothing: {broken_links(ROOT / doc)}"


def test_broken_links_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# A long study\n[ok](a.md#a-long-study) [no](b.md) [x](a.md#nowhere) "
                                   "[web](https://example.org/x)\n")
    assert broken_links(tmp_path / "a.md") == ["b.md", "a.md#nowhere"]


# What a doc must not carry: how the developers' work was divided, or one machine's paths. (Each word is spelt
# with a bracket so that a grep of the repository for them does not find this line.)
MACHINE_WORDS = re.compile(r"sess[i]on|shared[ ]VM|taken[ ]away|work[ ]period|this[ ]VM|/wor[k]/|/hom[e]/"
                           r"|[.][.]/shared", re.I)


@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_speak_of_the_project_alone(doc):
    hits = [line for line in (ROOT / doc).read_text().splitlines() if MACHINE_WORDS.search(line)]
    assert not hits, f"{doc}: {hits[0]!r}: use a placeholder (<cifar10-jpeg>) or name the CPU by model"
