"""Checks of the gradient term of `gradient_kd` on the real student (docs/methods.md, "Why the gradient term
starts late").

    python -m benchmarks.gradient_probe                 # the example teacher, a 3-layer student
    python -m benchmarks.gradient_probe --tiny          # seconds (smoke test)

1. Is the parameter gradient of L_grad right? Directional finite differences along the normalised gradient,
   in float64, against the autograd value (double backprop through the whole student).
2. How small are a fresh student's input gradients next to the teacher's, and after `--kd-steps` steps of plain
   logit KD? (The unit-normalised loss's parameter gradient grows like 1 / that norm.)
3. Can Adam lower L_grad on its own? Adam steps on L_grad alone on one fixed batch, at several learning rates,
   from both points.

Writes `gradient_probe.json` and `.md` under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common

common.set_module_name("benchmarks.gradient_probe")

import torch  # noqa: E402

from gkd.config import DistillConfig  # noqa: E402
from gkd.data.batching import Batch, collate, encode  # noqa: E402
from gkd.method import losses  # noqa: E402
from gkd.method.objective import TeacherTargets, forward, student_saliency_gradients, teacher_targets  # noqa: E402
from gkd.models.teacher import Teacher, load_teacher  # noqa: E402
from gkd.training.trainer import Trainer  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gradient_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=common.DEFAULT_TEACHER)
    parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--tiny", action="store_true", help="tiny random teacher and synthetic rows")
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--probe-rows", type=int, default=8, help="rows of the fixed probe batch")
    parser.add_argument("--kd-steps", type=int, default=40, help="steps of logit KD (batch 32) before the 2nd probe")
    parser.add_argument("--adam-steps", type=int, default=15)
    parser.add_argument("--learning-rates", default="1e-4,1e-5")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "gradient_probe.json"))
    args = parser.parse_args(argv)
    args.lr_list = [float(x) for x in args.learning_rates.split(",") if x.strip()]
    return args


def gradient_loss(student: torch.nn.Module, batch: Batch, targets: TeacherTargets) -> tuple[torch.Tensor, float]:
    """L_grad of the student on `batch` (graph kept) and the mean per-token norm of its input gradient."""
    result = forward(student, batch)
    (grad,) = torch.autograd.grad(losses.confidence_signal(result.logits), [result.embedding_output],
                                  create_graph=True)
    assert targets.unit_gradients is not None
    loss = losses.gradient_alignment_loss(targets.unit_gradients.to(grad.dtype), grad, batch.attention_mask)
    return loss, mean_token_norm(grad, batch)


def mean_token_norm(grad: torch.Tensor, batch: Batch) -> float:
    """Mean L2 norm of the per-token input gradients over real tokens."""
    return float(grad.detach().norm(dim=-1)[batch.attention_mask.bool()].mean())


def finite_difference_check(student: torch.nn.Module, batch: Batch, targets: TeacherTargets) -> list[dict[str, float]]:
    """Central differences of L_grad along its own normalised gradient, in float64, against autograd."""
    student = student.double()
    params = [p for p in student.parameters() if p.requires_grad]
    loss, _ = gradient_loss(student, batch, targets)
    grads = [g if g is not None else torch.zeros_like(p)
             for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params, strict=True)]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    direction = [g / norm for g in grads]
    analytic = float(norm)  # the derivative along the unit gradient direction is the gradient's norm
    rows = []
    for eps in (1e-3, 1e-4, 1e-5):
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, d in zip(params, direction, strict=True):
                    p.add_(sign * eps * d)
            values.append(float(gradient_loss(student, batch, targets)[0].detach()))
            with torch.no_grad():
                for p, d in zip(params, direction, strict=True):
                    p.sub_(sign * eps * d)
        rows.append({"eps": eps, "finite_difference": (values[0] - values[1]) / (2 * eps), "autograd": analytic})
    student.float()
    return rows


def adam_on_gradient_loss(student: torch.nn.Module, state: dict[str, torch.Tensor], batch: Batch,
                          targets: TeacherTargets, lr: float, steps: int) -> list[float]:
    """L_grad before each of `steps` Adam steps on L_grad alone, from the weights in `state`."""
    student.load_state_dict(state)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss, _ = gradient_loss(student, batch, targets)
        loss.backward()
        optimizer.step()
        history.append(round(float(loss.detach()), 4))
    return history


def kd_steps(student: torch.nn.Module, teacher: Teacher, texts: list[str], labels: list[int], steps: int,
             lr: float) -> None:
    """Plain logit KD (T 5, alpha 0.5) on consecutive batches of 32: what the delayed start lets happen first."""
    dataset = encode(teacher.tokenizer, texts, None, labels, 64)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for step in range(steps):
        start = (step * 32) % max(1, len(dataset) - 32)
        batch = collate(dataset, list(range(start, start + 32)), int(teacher.tokenizer.pad_token_id or 0))
        target = teacher_targets(teacher.model, batch, with_gradients=False)
        optimizer.zero_grad(set_to_none=True)
        loss, _ = losses.kd_loss(forward(student, batch).logits, target.logits, batch.labels, temperature=5.0,
                                 alpha=0.5)
        loss.backward()
        optimizer.step()


def teacher_gradient_norm(teacher: Teacher, batch: Batch) -> float:
    """The teacher's mean per-token input-gradient norm on `batch` (the scale the student starts far below)."""
    return mean_token_norm(student_saliency_gradients(teacher.model, batch)[1], batch)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    common.set_module_name("benchmarks.gradient_probe")
    args = parse_args(argv)
    common.set_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="gkd-bench-probe-"))
    if args.tiny:
        teacher_dir = common.make_tiny_teacher(scratch / "tiny-teacher", num_layers=max(4, args.student_layers))
        rows = common.synthetic_rows(32 * 4 + args.probe_rows, seed=0)
    else:
        teacher_dir = Path(args.teacher)
        if not (teacher_dir / "config.json").is_file():
            raise SystemExit(f"teacher {teacher_dir} not found: run `gkd example-teacher` or pass --tiny")
        examples = common.read_split(common.movie_review_split_files(args.data_dir)["train"])
        rows = [(e.text, str(e.label)) for e in examples if e.text.strip() and e.label is not None][:2000]
    teacher = load_teacher(teacher_dir, device=torch.device("cpu"))
    label_ids = [teacher.labels.index(label) for _, label in rows]
    config = DistillConfig.parse({"method": "gradient_kd", "teacher": str(teacher_dir),
                                  "student": {"num_layers": args.student_layers}, "data": {"train": "unused.csv"},
                                  "output_dir": str(scratch / "run")})
    torch.manual_seed(0)
    student = Trainer(config, teacher=teacher).build_student(teacher, teacher.labels)
    student.train()
    probe = encode(teacher.tokenizer, [t for t, _ in rows[-args.probe_rows:]], None, label_ids[-args.probe_rows:], 64)
    batch = collate(probe, list(range(len(probe))), int(teacher.tokenizer.pad_token_id or 0))
    targets = teacher_targets(teacher.model, batch)

    report: dict[str, Any] = {"benchmark": "gradient_probe", "environment": common.environment(argv),
                              "settings": {"teacher": "tiny" if args.tiny else str(teacher_dir),
                                           "student_layers": args.student_layers, "probe_rows": len(probe),
                                           "kd_steps": args.kd_steps, "adam_steps": args.adam_steps,
                                           "learning_rates": args.lr_list}}
    report["finite_difference"] = finite_difference_check(student, batch, targets)
    fresh = {k: v.clone() for k, v in student.state_dict().items()}
    report["fresh"] = {"mean_input_gradient_norm": gradient_loss(student, batch, targets)[1],
                       "adam": {str(lr): adam_on_gradient_loss(student, fresh, batch, targets, lr, args.adam_steps)
                                for lr in args.lr_list}}
    student.load_state_dict(fresh)
    kd_steps(student, teacher, [t for t, _ in rows[:-args.probe_rows]], label_ids[:-args.probe_rows],
             args.kd_steps, 1e-4)
    trained = {k: v.clone() for k, v in student.state_dict().items()}
    report["after_kd"] = {"mean_input_gradient_norm": gradient_loss(student, batch, targets)[1],
                          "adam": {str(lr): adam_on_gradient_loss(student, trained, batch, targets, lr,
                                                                  args.adam_steps) for lr in args.lr_list}}
    report["teacher_mean_input_gradient_norm"] = teacher_gradient_norm(teacher, batch)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    common.write_json_atomic(out, report)
    out.with_suffix(".md").write_text(render(report, markdown=True), encoding="utf-8")
    print(render(report, markdown=False))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


def render(report: dict[str, Any], markdown: bool) -> str:
    table = common.markdown_table if markdown else common.text_table
    s = report["settings"]
    parts = ["# gradient_probe", "", common.environment_markdown(report["environment"]), ""] if markdown else []
    parts.append(f"teacher {s['teacher']}, {s['student_layers']}-layer student cut from it, one fixed probe batch "
                 f"of {s['probe_rows']} rows; teacher's mean per-token input-gradient norm "
                 f"{report['teacher_mean_input_gradient_norm']:.3g}.")
    parts += ["", "finite differences of L_grad along its normalised gradient (float64):", "",
              table(["eps", "finite difference", "autograd"],
                    [[f"{r['eps']:g}", f"{r['finite_difference']:.6g}", f"{r['autograd']:.6g}"]
                     for r in report["finite_difference"]])]
    for key, title in (("fresh", "fresh student"), ("after_kd", f"after {s['kd_steps']} steps of logit KD")):
        part = report[key]
        parts += ["", f"Adam on L_grad alone, {title} (mean per-token input-gradient norm "
                      f"{part['mean_input_gradient_norm']:.3g}); L_grad before each step:", "",
                  table(["lr", "L_grad"], [[lr, " ".join(f"{v:.3f}" for v in values)]
                                            for lr, values in part["adam"].items()])]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
