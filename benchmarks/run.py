"""The main job: every benchmark family on whatever device exists (quick subset by default).

python benchmarks/run.py            # --quick on cuda if visible, else cpu
python benchmarks/run.py --full     # all shapes
python benchmarks/run.py --families linear_cross_entropy,cross_entropy   # these, in this order
python benchmarks/run.py --smoke    # tiny shapes, two providers: checks the plumbing only

python benchmarks/run.py --report WORK OUT   # the GPU check's summary (tools/gpu_check.sh)

--report needs neither torch nor logitops: it turns the GPU check's work folder (stages.tsv,
tools.tsv, meta.tsv, environment.txt, logs/, raw/<group>/*.json) into OUT/summary.md,
OUT/stages.json and one OUT/results/<group>.json per group of benchmark JSON files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

if __name__ == "__main__":  # before torch loads; see bench_cross_entropy.py
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
sys.path.insert(0, str(Path(__file__).parent))

FAMILIES = [
    "cross_entropy",
    "bce_with_logits",
    "sampling",
    "distillation",
    "linear_cross_entropy",
    "vocab_parallel",
    "token_logprobs",
    "transformers",
]
# Tiny shapes and the two providers every machine has (no torch.compile): seconds per family.
SMOKE_ARGS = {
    "cross_entropy": ["--shapes", "16x100", "--reps", "2", "--providers", "logitops,torch"],
    "bce_with_logits": ["--shapes", "8x16", "--reps", "2", "--providers", "logitops,torch"],
    "sampling": ["--vocab", "500", "--batches", "2", "--reps", "2"],
    "distillation": ["--shapes", "8x50", "--reps", "2", "--providers", "logitops,torch"],
    "linear_cross_entropy": [
        "--shapes",
        "16x8x50,32x8x50",
        "--reps",
        "2",
        "--providers",
        "logitops,torch",
    ],
    "vocab_parallel": ["--shapes", "16x100", "--reps", "2", "--providers", "logitops,torch"],
    "token_logprobs": ["--shapes", "16x8x50", "--reps", "2", "--providers", "logitops,torch"],
    "transformers": [
        "--shapes",
        "1x8x16x50",
        "--reps",
        "2",
        "--providers",
        "logitops,transformers",
    ],
}


def run_benchmarks(args: argparse.Namespace) -> None:
    import importlib

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    families = args.families.split(",") if args.families else FAMILIES
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        sys.exit(f"unknown families {unknown}; known: {FAMILIES}")
    common = ["--device", device] + ([] if args.full or args.smoke else ["--quick"])
    if args.out:
        common += ["--out", args.out]
    for family in families:
        module = importlib.import_module(f"bench_{family}")
        module.main(common + (SMOKE_ARGS[family] if args.smoke else []))


# ---------------------------------------------------------------------------------------------
# --report: summary.md, stages.json and merged results of a GPU check (no torch needed).


def _read_tsv(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def merge_results(raw: Path) -> dict | None:
    """{"files": {name: payload}} of every JSON file in raw (None when there are none)."""
    files = {}
    for path in sorted(raw.glob("*.json")):
        try:
            files[path.name] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            files[path.name] = {"error": f"unreadable: {exc}"}
    return {"files": files} if files else None


def result_rows(merged: dict | None) -> list[dict]:
    rows = []
    for payload in (merged or {}).get("files", {}).values():
        for r in payload.get("results", []):
            rows.append({**r, "copy_gbps": payload.get("copy_gbps")})
    return rows


def markdown_table(rows: list[dict]) -> list[str]:
    """One markdown row per measurement; skipped ones say why."""
    if not rows:
        return ["(no results)"]
    out = [
        "| op | mode | shape | dtype | provider | median ms | GB/s | % of copy | speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['op']} | {r['mode']} | {r['shape']} | {r['dtype']} | {r['provider']} |"
        if not r.get("median_ms"):
            out.append(f"{head} skipped: {r.get('skipped') or 'no time'} | | | |")
            continue
        gbps = f"{r['gbps']:.4g}" if r.get("gbps") else "-"
        frac = f"{100 * r['fraction_of_copy']:.1f}" if r.get("fraction_of_copy") else "-"
        ratio = f"{r['ratio_vs_torch']:.2f}" if r.get("ratio_vs_torch") else "-"
        out.append(f"{head} {r['median_ms']:.3f} | {gbps} | {frac} | {ratio} |")
    return out


# Rows of a benchmark group in summary.md: keeps it a few tens of KB (CI pipes it to `head`).
SUMMARY_ROWS = 150

_PYTEST_TOTALS = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)")


def pytest_outcome(log: Path) -> dict | None:
    """Counts and failed test ids from a pytest log, also of a run cut before its end (then from
    the progress dots)."""
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    failures = [
        line.split(" - ")[0].split(" ", 1)[1]
        for line in text.splitlines()
        if line.startswith(("FAILED ", "ERROR ")) and " " in line
    ]
    counts: dict[str, int] = {}
    final = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    finished = bool(final) and " in " in final[-1]
    if finished:
        for number, what in _PYTEST_TOTALS.findall(final[-1]):
            counts["errors" if what.startswith("error") else what] = int(number)
    else:  # cut: count the progress characters of `pytest -q`
        for line in text.splitlines():
            m = re.fullmatch(r"([.FEsxX]+)\s*(\[\s*\d+%\])?", line.strip())
            if m:
                for char, what in ((".", "passed"), ("F", "failed"), ("E", "errors")):
                    counts[what] = counts.get(what, 0) + m.group(1).count(char)
                counts["skipped"] = counts.get("skipped", 0) + m.group(1).count("s")
    return {"finished": finished, "counts": counts, "failures": failures[:50]}


def sanitizer_outcome(log: Path) -> dict | None:
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    summaries = [int(n) for n in re.findall(r"ERROR SUMMARY: (\d+) error", text)]
    reports = [
        line.strip("= ").strip()
        for line in text.splitlines()
        if re.match(r"=+\s+(Invalid|Race|Error|Warning|Program hit|Uninitialized|Barrier)", line)
    ]
    notes = [
        phrase
        for phrase in (
            "Device not supported",
            "Target application terminated before first instrumented API call",
            "Unable to find injection library",
            "Internal Sanitizer Error",
        )
        if phrase in text
    ]
    return {
        "errors": sum(summaries) if summaries else len(reports),
        "error_summaries": len(summaries),
        "first_reports": reports[:10],
        "notes": notes,
        "pytest": pytest_outcome(log),
    }


NCU_METRICS = {  # what tools/gpu_check.sh asks ncu for, and the summary's column names
    "gpu__time_duration.sum": "duration",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "DRAM % of peak",
    "dram__bytes_read.sum": "DRAM read",
    "dram__bytes_write.sum": "DRAM written",
}


def ncu_outcome(log: Path) -> list[dict] | None:
    """Per kernel launch: duration and DRAM figures from `ncu --csv` output."""
    if not log.exists():
        return None
    import csv

    lines = [line for line in log.read_text(errors="replace").splitlines() if line[:1] == '"']
    launches: dict[str, dict] = {}
    for row in csv.DictReader(lines):
        name, metric, value = (
            row.get("Kernel Name"),
            row.get("Metric Name"),
            row.get("Metric Value"),
        )
        if not name or not metric:
            continue
        entry = launches.setdefault(row.get("ID", name), {"kernel": name})
        try:
            entry[metric] = float(str(value).replace(",", ""))
        except ValueError:
            entry[metric] = value
        entry.setdefault("units", {})[metric] = row.get("Metric Unit")
    return list(launches.values())


def ptxas_outcome(log: Path) -> dict | None:
    """Functions ptxas reported on (LOGITOPS_PTXAS_VERBOSE=1) and those that spill."""
    if not log.exists():
        return None
    functions, spills, current = set(), {}, None
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
            functions.add(current)
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current and (int(m.group(1)) or int(m.group(2))):
            spills[current] = f"{m.group(1)} B stores, {m.group(2)} B loads"
    return {"functions": len(functions), "spills": spills} if functions else None


def _short_kernel(name: str) -> str:
    name = name.split("(")[0]
    return re.sub(r"<.*", "<...>", name.replace("void ", ""))


def report(work: Path, out: Path) -> None:
    meta = dict(row[:2] for row in _read_tsv(work / "meta.tsv") if len(row) >= 2)
    stages = [row + [""] * (3 - len(row)) for row in _read_tsv(work / "stages.tsv")]
    tools = _read_tsv(work / "tools.tsv")
    logs = work / "logs"
    groups = {}
    for raw in sorted((work / "raw").glob("*")) if (work / "raw").is_dir() else []:
        merged = merge_results(raw)
        if merged is not None:
            _write_atomic(out / "results" / f"{raw.name}.json", json.dumps(merged, indent=1))
            groups[raw.name] = merged
    tests = pytest_outcome(logs / "tests.log")
    sanitizers = {
        tool: outcome
        for tool in ("memcheck", "racecheck")
        if (outcome := sanitizer_outcome(logs / f"{tool}.log")) is not None
    }
    ncu = ncu_outcome(logs / "ncu.log")
    ptxas = ptxas_outcome(logs / "build.log")
    state = {
        "meta": meta,
        "stages": [{"name": n, "status": s, "seconds": t} for n, s, t in stages],
        "tools": {row[0]: (row[1] if len(row) > 1 else "") for row in tools},
        "tests": tests,
        "sanitizers": sanitizers,
        "ncu": ncu,
        "ptxas": ptxas,
        "results": {name: f"results/{name}.json" for name in groups},
    }
    _write_atomic(out / "stages.json", json.dumps(state, indent=1))

    md = [f"# logitops GPU check ({meta.get('device', '?')})", ""]
    if meta:
        md += [", ".join(f"{k}: {v}" for k, v in meta.items()), ""]
    env = work / "environment.txt"
    if env.exists():
        md += ["```", env.read_text().rstrip(), "```", ""]
    missing = [row[0] for row in tools if len(row) > 1 and row[1] == "not found"]
    if tools:
        md.append(
            "Tools: " + "; ".join(f"{row[0]}: {row[1] if len(row) > 1 else ''}" for row in tools)
        )
        md.append("")
    if missing:
        md += ["Missing here: " + ", ".join(missing) + ".", ""]
    md += ["| stage | status | seconds |", "|---|---|---|"]
    md += [f"| {n} | {s} | {t} |" for n, s, t in stages]
    md.append("")
    if ptxas:
        spilling = "; ".join(f"{k}: {v}" for k, v in sorted(ptxas["spills"].items())) or "none"
        md += [f"ptxas: {ptxas['functions']} functions; spills: {spilling}", ""]
    if "headline" in groups:
        md += ["## Headline", ""]
        rows = result_rows(groups["headline"])
        copies = sorted({r["copy_gbps"] for r in rows if r.get("copy_gbps")})
        if copies:
            md += ["Same-run copy bandwidth: " + ", ".join(f"{c:.4g} GB/s" for c in copies), ""]
        md += markdown_table(rows) + [""]
    if tests is not None:
        counts = ", ".join(f"{v} {k}" for k, v in tests["counts"].items()) or "nothing counted"
        cut = "" if tests["finished"] else " (cut before the end; counted from the progress)"
        md += ["## CUDA tests" if meta.get("device") == "cuda" else "## Tests", ""]
        md += [f"{counts}{cut}", ""]
        md += [f"- {f}" for f in tests["failures"]] + ([""] if tests["failures"] else [])
    for tool, outcome in sanitizers.items():
        line = f"{outcome['errors']} errors"
        if outcome["error_summaries"]:
            line += f" ({outcome['error_summaries']} error summaries)"
        if outcome["pytest"] and outcome["pytest"]["counts"]:
            line += "; tests: " + ", ".join(
                f"{v} {k}" for k, v in outcome["pytest"]["counts"].items()
            )
        md += [f"## compute-sanitizer {tool}", "", line, ""]
        md += [f"- {r}" for r in outcome["first_reports"]]
        md += [f"- note: the log says '{n}'" for n in outcome["notes"]] + [""]
    if ncu:
        columns = list(NCU_METRICS)
        md += ["## ncu (logitops kernels)", ""]
        md += ["| kernel | " + " | ".join(NCU_METRICS.values()) + " |"]
        md += ["|---" * (len(columns) + 1) + "|"]
        for launch in ncu:
            cells = [
                f"{launch[m]} {launch['units'].get(m) or ''}".strip() if m in launch else "-"
                for m in columns
            ]
            md.append(f"| {_short_kernel(launch['kernel'])} | " + " | ".join(cells) + " |")
        md.append("")
    for name, merged in groups.items():
        if name == "headline":
            continue
        rows = result_rows(merged)
        md += [f"## Benchmarks ({name})", ""] + markdown_table(rows[:SUMMARY_ROWS])
        if len(rows) > SUMMARY_ROWS:
            md.append(f"\n{len(rows) - SUMMARY_ROWS} more rows in results/{name}.json")
        md.append("")
    _write_atomic(out / "summary.md", "\n".join(md) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cuda if visible, else cpu")
    parser.add_argument("--full", action="store_true", help="all shapes instead of --quick")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: the plumbing only")
    parser.add_argument("--families", default=None, help=f"comma-separated, of {FAMILIES}")
    parser.add_argument("--out", default=None, help="directory for JSON results")
    parser.add_argument("--report", nargs=2, metavar=("WORK", "OUT"), type=Path, default=None)
    args = parser.parse_args(argv)
    if args.report:
        report(*args.report)
        return
    run_benchmarks(args)


if __name__ == "__main__":
    main()
