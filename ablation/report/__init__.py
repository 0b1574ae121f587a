"""Analysis of a study directory: tidy frames, tables (Markdown, LaTeX, CSV), figures and report.md.

Imports pandas, numpy, scipy, matplotlib and seaborn only (never torch or Ray), so a report can be
written on any machine that holds the study's files, while the sweep runs elsewhere.

    frames     study dir -> epochs and trials frames
    checks     each trial's checks of the classic bugs (frozen groups moved, wrong or unwanted backbone)
    stats      t-intervals over seeds, paired t-test
    reference  the original report's numbers
    tables     numeric summary tables;  render: their Markdown / LaTeX text
    figures    PNG + SVG figures;        findings: header and sentences of report.md
    build      write_report: everything under <study>/report/ (report_study: `ablation report`, URIs too)
"""

__all__ = ["report_study", "write_report"]


def __getattr__(name: str):
    """write_report and report_study on first use: `ablation.report.reference` alone (report_protocol.sh on a box with
    torch but no pandas or seaborn) must not import the plotting stack."""
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
