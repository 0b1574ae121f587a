#!/usr/bin/env bash
# Rebuild a study's report and copy what a results/ folder keeps: report.md, tables/, figures/, the manifest
# (every invocation, its code version, the data copy) and the sweep logs (every epoch and interruption); never
# checkpoints. Usage: scripts/publish_report.sh <study dir> <results/name>
# ABLATION (default `ablation`) is the command, e.g. "python3 -m ablation.cli" where the package is on PYTHONPATH.
set -euo pipefail
ablation=(${ABLATION:-ablation})
if [ $# -ne 2 ]; then
  echo "usage: $0 <study dir> <results folder>, e.g. $0 <storage>/report results/report-cifar10" >&2
  exit 2
fi
study=$1 out=$2
if [ ! -f "$study/manifest.json" ]; then
  echo "publish_report: $study has no manifest.json: not a study directory (give the path ablation sweep printed)" >&2
  exit 2
fi
"${ablation[@]}" report "$study"
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "${out%/}.publishing.XXXX")  # filled first, then swapped in: never a half-copied folder
trap 'rm -rf "$tmp"' EXIT
cp -r "$study/report/report.md" "$study/report/tables" "$study/report/figures" "$study/manifest.json" "$tmp/"
[ -d "$study/logs" ] && cp -r "$study/logs" "$tmp/"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "published $study -> $out ($(du -sh "$out" | cut -f1))"
