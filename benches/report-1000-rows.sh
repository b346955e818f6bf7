#!/usr/bin/env bash
# Times `fitbench report` on 1,000 result rows (docs/performance.md).
# The rows are the committed real results, repeated over 25 box names with their tok/s and
# memory scaled per box, so every chart has many boxes, models and points to draw.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000}
source_csv=results/epyc-zen5-2vcpu.csv
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -n "${KEEP:-}" ] && trap - EXIT && echo "rows and report kept in $work"
python3 - "$source_csv" "$work/many.csv" "$rows" <<'PY'
import csv, sys
source, out, wanted = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(source, newline="") as f:
    reader = csv.DictReader(f)
    header, rows = reader.fieldnames, list(reader)
with open(out, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=header)
    writer.writeheader()
    for i in range(wanted):
        row = dict(rows[i % len(rows)])
        box = i // len(rows) % 25
        scale = 0.2 + box * 0.05
        row["host"] = f"box-{box:02}"
        row["ram_total_bytes"] = str(int(row["ram_total_bytes"]) * (box + 1) // 25 + (1 << 30))
        for column in ("avg_ts", "median_ts", "stddev_ts"):
            row[column] = f"{float(row[column]) * scale:.3f}"
        row["samples_ts"] = ";".join(f"{float(v) * scale:.3f}" for v in row["samples_ts"].split(";"))
        writer.writerow(row)
PY
cargo build --release --quiet
hyperfine -N --warmup 2 --runs 10 \
    "./target/release/fitbench report $work/many.csv --out $work/report"
