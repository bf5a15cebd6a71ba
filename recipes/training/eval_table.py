"""Per-task success tables (CSV and markdown) for evaluations."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class EpisodeResult:
    suite: str
    task_id: int
    task: str  # language instruction
    init_state_id: int
    success: bool
    steps: int = 0


def success_table(results: Sequence[EpisodeResult]) -> list[dict[str, object]]:
    """Rows per (suite, task) with episodes, successes and rate, plus one 'all' row per suite and overall."""
    by_task: dict[tuple[str, int], list[EpisodeResult]] = {}
    for r in results:
        by_task.setdefault((r.suite, r.task_id), []).append(r)
    rows: list[dict[str, object]] = []
    for (suite, tid), rs in sorted(by_task.items()):
        n, s = len(rs), sum(r.success for r in rs)
        rows.append({"suite": suite, "task_id": tid, "task": rs[0].task, "episodes": n, "successes": s, "success_rate": s / n})
    suites = sorted({r.suite for r in results})
    for suite in suites:
        rs = [r for r in results if r.suite == suite]
        n, s = len(rs), sum(r.success for r in rs)
        rows.append({"suite": suite, "task_id": "all", "task": "(all tasks)", "episodes": n, "successes": s, "success_rate": s / n})
    if len(suites) > 1:
        n, s = len(results), sum(r.success for r in results)
        rows.append({"suite": "all", "task_id": "all", "task": "(all suites)", "episodes": n, "successes": s, "success_rate": s / n})
    return rows


def write_tables(results: Sequence[EpisodeResult], out_dir: str | Path, stem: str = "eval", note: str = "") -> tuple[Path, Path]:
    """Write `<stem>.csv` and `<stem>.md` (`note` heads the markdown, e.g. the protocol); return their paths."""
    if not results:
        raise ValueError("no episodes to tabulate: run at least one evaluation episode")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = success_table(results)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    lines = [note, ""] if note else []
    lines += ["| suite | task | instruction | episodes | successes | success rate |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['suite']} | {r['task_id']} | {r['task']} | {r['episodes']} | {r['successes']} | {100 * float(r['success_rate']):.1f}% |")  # type: ignore[arg-type]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def write_episodes_csv(results: Sequence[EpisodeResult], path: str | Path) -> Path:
    """Every episode as one row (for later analysis)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suite", "task_id", "task", "init_state_id", "success", "steps"])
        for r in results:
            w.writerow([r.suite, r.task_id, r.task, r.init_state_id, int(r.success), r.steps])
    return path
