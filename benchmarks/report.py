"""Writing a run's results: ``latest.json`` (everything), ``latest.md`` (the short table and the
machine) and ``latest.png`` (each barred figure against its bar). Every file is checked for the
run's passwords, tokens and API keys before it is written; any found are replaced by <redacted>."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .table import Row

STEM = "latest"


def write(results: dict, rows: list[Row], out_dir: Path, secrets) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{STEM}.json", "md": out_dir / f"{STEM}.md", "png": out_dir / f"{STEM}.png"}
    results = {**results, "table": [r.to_dict() for r in rows], "chart": paths["png"].name}
    try:
        chart(rows, results, paths["png"])
    except Exception as exc:  # noqa: BLE001 - the JSON and the table matter more than the picture
        why = "matplotlib is not installed (pip install -e '.[bench]')" if isinstance(exc, ImportError) else \
            f"{type(exc).__name__}: {exc}"
        print(f"benchmarks: no chart: {why}", file=sys.stderr)
        results["chart"] = f"not drawn: {why}"
        paths.pop("png").unlink(missing_ok=True)  # never leave an older run's chart beside this run's table
    _write_text(paths["json"], json.dumps(results, indent=2, default=str) + "\n", secrets)
    _write_text(paths["md"], markdown(results, rows), secrets)
    return paths


def _write_text(path: Path, text: str, secrets) -> None:
    text, hits = secrets.redact(text)
    if hits:
        print(f"benchmarks: WARNING: {hits} secret value(s) redacted from {path.name}", file=sys.stderr)
    path.write_text(text)


def _met(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(rows: list[Row]) -> str:
    lines = ["| row | direct | gateway | PgBouncer / JupySQL | ratio | bar | met |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        label = r.label + (f" ⚠ {r.note}" if r.note and r.met is not None else "")
        lines.append("| " + " | ".join(_cell(c) for c in (label, r.direct, r.gateway, r.other, r.ratio, r.bar,
                                                           _met(r.met))) + " |")
    return "\n".join(lines) + "\n"


def markdown(results: dict, rows: list[Row]) -> str:
    m = results.get("machine", {})
    p = results.get("parameters", {})
    head = [f"# sdm gateway benchmarks, {m.get('date', '?')}", ""]
    if results.get("profile") == "quick":
        head += ["**Quick smoke run** (`--quick`): sizes too small for the figures to mean much; "
                 "run `python -m benchmarks` for real figures.", ""]
    rounds = p.get("pgbench_rounds") or 1
    per_run = f"pgbench {p.get('pgbench_seconds')} s per run" + (f", {rounds} interleaved rounds" if rounds > 1 else "")
    head += [f"Sizes: {p.get('rows', 0):,} rows; {per_run}; "
             f"{p.get('idle')} idle sessions; sections: {', '.join(results.get('sections', {}))}. "
             "Every figure is measured side by side in this one run (see docs/benchmarks.md).", "", ""]
    errors = {k: v["error"] for k, v in results.get("sections", {}).items() if isinstance(v, dict) and "error" in v}
    tail = [""]
    if str(results.get("chart", "")).endswith(".png"):
        tail += [f"![each barred figure against its bar]({results['chart']})", ""]
    if errors:
        tail += ["Sections that failed: " + "; ".join(f"{k}: {str(v)[:200]}" for k, v in errors.items()), ""]
    packages = m.get("packages", {})
    git = m.get("git", {})
    tail += ["## Machine", "",
             f"- CPU: {m.get('cpu_model')} ({m.get('cores')} cores, {m.get('cores_usable')} usable); "
             f"RAM {m.get('ram_gib')} GiB; load average at start {m.get('load_average_at_start')}",
             f"- Kernel: {m.get('kernel')}; OS: {m.get('os')}; Python {m.get('python')}",
             f"- PostgreSQL: {m.get('postgresql')}; PgBouncer: {m.get('pgbouncer') or 'not used'}",
             "- " + ", ".join(f"{k} {v}" for k, v in packages.items() if v),
             f"- git: {git.get('commit')}{' (with uncommitted changes)' if git.get('dirty') else ''}; "
             f"run took {results.get('elapsed_s')} s", ""]
    return "\n".join(head) + table_markdown(rows) + "\n".join(tail)


def chart(rows: list[Row], results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [r for r in rows if r.value is not None and r.threshold is not None]
    fig, ax = plt.subplots(figsize=(10, 0.6 * max(3, len(plotted)) + 1.2))
    if not plotted:
        ax.text(0.5, 0.5, "no barred figure was measured", ha="center", va="center")
        ax.axis("off")
    else:
        labels = [f"{r.label}\n({r.better} is better)" for r in plotted][::-1]
        values = [r.value for r in plotted][::-1]
        colours = ["#2e7d32" if r.met else "#c62828" if r.met is False else "#9e9e9e" for r in plotted][::-1]
        y = list(range(len(plotted)))
        every = [v for v in values if v > 0] + [r.threshold for r in plotted]
        low, high = min(every) / 2, max(every) * 2.5
        if high / low > 20:  # ratios far apart (0.1x next to 10x): a log axis keeps every bar readable
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        else:
            low, high = 0, max(every) * 1.25
        ax.barh(y, [max(v, low) - low for v in values], left=low, color=colours, height=0.55)
        for i, r in enumerate(plotted[::-1]):
            ax.plot([r.threshold, r.threshold], [i - 0.4, i + 0.4], color="black", linewidth=2)
            ax.text(max(r.value, r.threshold, low), i, f" {r.value:.2f}", va="center", fontsize=8)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlim(low, high)
        ax.set_xlabel("measured ratio (black tick: the bar; memory and audit as a fraction of their bar)")
    m = results.get("machine", {})
    title = f"sdm gateway benchmarks: {m.get('date', '')} {(m.get('git') or {}).get('commit', '')[:10]}"
    if results.get("profile") == "quick":
        title += " (quick smoke run)"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
