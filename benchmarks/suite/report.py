"""Tables of the suite: every task x depth x method as mean ± std over seeds, and the bar of issue 17.

The bar, per task and depth (`gradient_kd` against `kd` of the same runs): no run of any method ends at the
majority class; `gradient_kd`'s mean test accuracy is at least `kd`'s minus 0.3 points; its saliency agreement
is higher than `kd`'s; and (3 layers) it is within 3 points of the teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import common

METRICS = ("accuracy", "macro_f1", "teacher_agreement", "saliency_agreement", "saliency_top3_overlap")
METHOD_ORDER = ("ce", "kd", "pkd", "gradient_kd", "gradient_kd_cls")
ACCURACY_SLACK = 0.003  # gradient_kd may trail kd by at most 0.3 points (mean of the seeds)
TEACHER_GAP = 0.03  # a 3-layer gradient_kd student within 3 points of its teacher


def majority_macro_f1(label_counts: dict[str, int]) -> float:
    """Macro-F1 of a model that always predicts the most frequent label: a run at or below it has collapsed."""
    total = sum(label_counts.values())
    share = max(label_counts.values()) / total
    return (2 * share / (1 + share)) / len(label_counts)


def collapsed(run: dict[str, Any], task: dict[str, Any]) -> bool:
    floor = majority_macro_f1(task["splits"]["test"]["labels"])
    return run["test"].get("macro_f1", 0.0) <= floor + 0.02


def summarise(report: dict[str, Any]) -> list[dict[str, Any]]:
    buckets: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for run in report["runs"]:
        buckets.setdefault((run["task"], run["layers"], run["method"]), []).append(run)
    rows = []
    for (task, layers, method), members in buckets.items():
        row: dict[str, Any] = {"task": task, "layers": layers, "method": method, "n": len(members),
                               "seeds": sorted(m["seed"] for m in members)}
        for metric in METRICS:
            values = [m["test"][metric] for m in members if metric in m["test"]]
            mean, std = common.mean_std(values)
            row[metric] = {"mean": mean, "std": std, "values": values}
        info = report["tasks"].get(task)
        row["collapsed"] = sum(collapsed(m, info) for m in members) if info else 0
        row["warned"] = sum(bool(m.get("warnings")) for m in members)
        row["seconds"] = common.mean_std([m["seconds"] for m in members])[0]
        rows.append(row)
    task_order = list(report["tasks"])
    rows.sort(key=lambda r: (task_order.index(r["task"]) if r["task"] in task_order else 99, -r["layers"],
                             METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else 99))
    return rows


def verdicts(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 17's bar for every (task, depth) with both kd and gradient_kd runs."""
    index = {(r["task"], r["layers"], r["method"]): r for r in rows}
    out = []
    for (task, layers, method), row in index.items():
        kd = index.get((task, layers, "kd"))
        if method != "gradient_kd" or kd is None:
            continue
        teacher = report["tasks"][task]["teacher"]["test"]["accuracy"]
        any_collapse = sum(r["collapsed"] for (t, d, _), r in index.items() if t == task and d == layers)
        gap = row["accuracy"]["mean"] - kd["accuracy"]["mean"]
        saliency_gain = row["saliency_agreement"]["mean"] - kd["saliency_agreement"]["mean"]
        teacher_gap = teacher - row["accuracy"]["mean"]
        best_method_gap = teacher - max(r["accuracy"]["mean"] for (t, d, _), r in index.items()
                                        if t == task and d == layers)
        checks = {
            "no_collapse": any_collapse == 0,
            "accuracy_vs_kd": gap >= -ACCURACY_SLACK,
            "saliency_vs_kd": saliency_gain > 0,
            "near_teacher": teacher_gap <= TEACHER_GAP if layers >= 3 else None,
        }
        out.append({"task": task, "layers": layers, "n": min(row["n"], kd["n"]), "gap_vs_kd": gap,
                     "saliency_gain": saliency_gain, "teacher_gap": teacher_gap,
                    "best_method_teacher_gap": best_method_gap, "collapses": any_collapse,
                     "checks": checks, "met": all(v for v in checks.values() if v is not None)})
    return out


def _pm(stat: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    if not stat["values"]:
        return "-"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _points(gap: float | None) -> str:
    return "-" if gap is None else f"{gap * 100:.1f}"


def render(report: dict[str, Any], markdown: bool = True) -> str:
    table = common.markdown_table if markdown else common.text_table
    s = report["settings"]
    rows = report.get("summary") or summarise(report)
    parts: list[str] = []
    if markdown:
        parts += ["# task suite", ""]
        if report.get("environment"):
            parts += [common.environment_markdown(report["environment"]), ""]
        for merged in report.get("merged_from", []):
            parts += [f"- merged: `{merged['command']}` ({merged['runs']})"]
        if report.get("merged_from"):
            parts.append("")
    overrides = ", ".join(f"{k}={v}" for k, v in s.get("overrides", {}).items()) or "none"
    parts.append(f"Students: the library's default hyperparameters, bounded for CPU time to {s['epochs']} epochs, "
                 f"max length {s['max_length']} and the first {s.get('student_rows') or s['train_rows']} training rows "
                 f"(the same for every method; teachers on the first {s['train_rows']}); overrides: {overrides}. "
                 "Test metrics of the best-on-dev checkpoint, mean ± std over "
                 "seeds. Saliency agreement: mean cosine between teacher and student per-token input gradients.")
    task_rows = []
    for name, info in report["tasks"].items():
        sp = info["splits"]
        labels = ", ".join(f"{k} {v}" for k, v in sp["train"]["labels"].items())
        t = info["teacher"]["test"]
        task_rows.append([name, info["description"], sp["train"]["rows"], sp["dev"]["rows"], sp["test"]["rows"],
                          labels, f"{t['accuracy'] * 100:.1f}", f"{t['macro_f1'] * 100:.1f}"])
    parts += ["", "## tasks and teachers" if markdown else "tasks and teachers:", "",
              table(["task", "what", "train", "dev", "test", "train labels", "teacher acc %", "teacher F1 %"],
                    task_rows)]
    body = [[r["task"], r["layers"], r["method"], r["n"], _pm(r["accuracy"]), _pm(r["macro_f1"]),
             _pm(r["teacher_agreement"]), _pm(r["saliency_agreement"], 1.0, 3), r["collapsed"],
             r.get("warned", 0), f"{r['seconds']:.0f}"] for r in rows]
    parts += ["", "## task x depth x method" if markdown else "task x depth x method:", "",
              table(["task", "layers", "method", "n", "test acc %", "macro-F1 %", "teacher agr. %", "saliency cos",
                     "collapsed", "warned", "s/run"], body)]
    verdict_rows = report.get("verdicts") or verdicts(report, rows)
    if verdict_rows:
        def mark(value: bool | None) -> str:
            return "-" if value is None else ("yes" if value else "**no**")

        vbody = [[v["task"], v["layers"], v["n"], f"{v['gap_vs_kd'] * 100:+.2f}", f"{v['saliency_gain']:+.3f}",
                  f"{v['teacher_gap'] * 100:.1f}", _points(v.get("best_method_teacher_gap")),
                  mark(v["checks"]["no_collapse"]),
                  mark(v["checks"]["accuracy_vs_kd"]), mark(v["checks"]["saliency_vs_kd"]),
                  mark(v["checks"]["near_teacher"]), mark(v["met"])] for v in verdict_rows]
        parts += ["", "## the bar: gradient_kd against kd" if markdown else "the bar:", "",
                  table(["task", "layers", "seeds", "acc - kd (points)", "saliency - kd", "teacher - acc (points)",
                         "teacher - best method", "no collapse", "acc >= kd - 0.3", "saliency > kd",
                         "within 3 of teacher", "met"], vbody)]
    return "\n".join(parts) + "\n"


def write(report: dict[str, Any], out: Path) -> None:
    report["summary"] = summarise(report)
    report["verdicts"] = verdicts(report, report["summary"])
    common.write_json_atomic(out, report)
    out.with_suffix(".md").write_text(render(report, markdown=True), encoding="utf-8")
