"""BENCHMARKS.md item 1: one optimisation step of each method, with and without the teacher cache.

    python -m benchmarks.train_step                       # example teacher, batch 32, length 128
    python -m benchmarks.train_step --tiny --steps 3      # tiny random teacher (seconds)

What runs is the library's own step, through the trainer's public seams: `Trainer.start` sets up a `RunState`
(the student, `make_optimizer`'s AdamW, precision, the gradient-term cap) and `Trainer.step(run, group)` is one
optimisation step (collate, teacher targets from `TeacherCache.targets` or live `teacher_targets`,
`student_loss_parts`, backward (capped), gradient clipping, AdamW step, scheduler step, zero_grad). Each shape's
data and cache are put in the run's `encoded["train"]` and `caches["train"]`. Caches are built with
`gkd.training.teacher_cache.build_cache`.

Shapes (`--shapes`):
  padded    movie-review texts tokenised with truncation and right-padded to exactly `--length` (the spec's
            [32, 128]; `EncodedDataset.pad_to` pads every batch with mask 0, which is what tokenising with
            padding="max_length" gives);
  packed    consecutive texts joined until every row holds `--length` real tokens (no padding: the
            worst case for the cache, which gathers real tokens);
  bucketed  the real lengths with the trainer's length bucketing (`gkd.data.batching.epoch_batches`), i.e.
            what a movie-review training run actually does.
Every variant (method x cache) sees the same batches; rounds visit the variants in a shuffled
round-robin so drifting load on a shared machine hits all of them alike; figures are medians.

The epoch comparison trains `gradient_kd` for one full epoch over a fixed subset of the training split
(`--epoch-batches` batches, bucketed real lengths, evaluation excluded) with the cache and without,
interleaved batch by batch, `--epoch-repeats` times. Peak RSS per variant is measured in a fresh subprocess each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common

common.set_module_name("benchmarks.train_step")

import torch  # noqa: E402

from gkd.config import DistillConfig, Hyperparameters  # noqa: E402
from gkd.data.batching import EncodedDataset, collate, encode, epoch_batches  # noqa: E402
from gkd.method import losses  # noqa: E402
from gkd.method.objective import forward  # noqa: E402
from gkd.method.properties import method_properties  # noqa: E402
from gkd.models.teacher import Teacher, load_teacher  # noqa: E402
from gkd.training.allocator import reuse_freed_memory  # noqa: E402
from gkd.training.teacher_cache import TeacherCache, build_cache  # noqa: E402
from gkd.training.trainer import RunState, Trainer, linear_schedule, resolve_device  # noqa: E402

ALL_METHODS = ("ce", "kd", "pkd", "gradient_kd", "gradient_kd_cls")
DEFAULT_METHODS = ALL_METHODS
SHAPES = ("padded", "packed", "bucketed")
TARGET_STEP_RATIO = 1.5
TARGET_EPOCH_SPEEDUP = 2.0


# ---------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128, help="tokens per row of the padded/packed shapes")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per variant and shape")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per variant first")
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--teacher", default=common.DEFAULT_TEACHER)
    parser.add_argument("--tiny", action="store_true", help="use a tiny random teacher (and synthetic data)")
    parser.add_argument("--random-teacher", default=None, metavar="LAYERSxHIDDEN",
                        help="time a randomly initialised teacher of this size (e.g. 12x768, BERT-base) with "
                        "--teacher's tokenizer and labels: timing only, its predictions mean nothing")
    parser.add_argument("--synthetic-data", action="store_true", help="synthetic sentences instead of reviews")
    parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="DistillConfig.precision: the autocast of the student's step")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--shapes", default="padded,bucketed", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--epoch-batches", type=int, default=20, help="batches in the epoch comparison (0: skip)")
    parser.add_argument("--epoch-repeats", type=int, default=2)
    parser.add_argument("--no-rss", action="store_true", help="skip the per-variant peak-RSS subprocesses")
    parser.add_argument("--rss-steps", type=int, default=2, help="steps each peak-RSS subprocess runs")
    parser.add_argument("--phases", action=argparse.BooleanOptionalAction, default=True,
                        help="time the phases of a gradient_kd step (padded shape)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler top ops of gradient_kd steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-term-cap", type=common.optional_float,
                        default=Hyperparameters().gradient_term_cap,
                        help="hyperparameters.gradient_term_cap ('none': the uncapped sum)")
    parser.add_argument("--gradient-term-cap-every", type=int, default=Hyperparameters().gradient_term_cap_every,
                        help="hyperparameters.gradient_term_cap_every (1: measure the cap's scale every step)")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "train_step.json"))
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = sorted(set(args.method_list) - set(ALL_METHODS))
    if bad:
        parser.error(f"unknown methods {bad}; choose from {', '.join(ALL_METHODS)}")
    args.shape_list = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = sorted(set(args.shape_list) - set(SHAPES))
    if bad:
        parser.error(f"unknown shapes {bad}; choose from {', '.join(SHAPES)}")
    if args.tiny:
        args.synthetic_data = True
    args.teacher_description = "tiny" if args.tiny else None  # set for a random teacher by resolve_teacher
    if args.random_teacher is not None:
        try:
            layers, hidden = (int(part) for part in args.random_teacher.lower().split("x"))
        except ValueError:
            parser.error(f"--random-teacher takes LAYERSxHIDDEN, e.g. 12x768, not {args.random_teacher!r}")
        if layers < 1 or hidden < 64 or hidden % 64:
            parser.error("--random-teacher needs at least 1 layer and a hidden size that is a multiple of 64")
        args.random_teacher_shape = (layers, hidden)
    return args


# ---------------------------------------------------------------- set-up
@dataclass
class Variant:
    """One method with or without the cache: its own trainer and run (student, optimiser, scheduler, cap)."""

    method: str
    cached: bool
    trainer: Trainer
    run: RunState
    cuda_peak_mb: float | None = None  # most CUDA memory allocated during one of its measured steps (CUDA only)

    @property
    def uses_teacher(self) -> bool:
        return method_properties(self.method).teacher_logits

    @property
    def name(self) -> str:
        if not self.uses_teacher:
            return self.method
        return f"{self.method}{'+cache' if self.cached else ''}"

    def use(self, work: Workload) -> None:
        """Train on `work`'s data, with its cache when this variant is the cached one."""
        self.run.encoded["train"] = work.dataset
        self.run.caches["train"] = work.cache if self.cached else None

    def step(self, work: Workload, indices: list[int]) -> Any:
        """The trainer's optimisation step on one micro-batch of `work`."""
        self.use(work)
        return self.trainer.step(self.run, [indices])


@dataclass
class Workload:
    """A tokenised pool of examples, its batches, its cache and how collate must pad it."""

    shape: str
    dataset: EncodedDataset
    batches: list[list[int]]
    cache: TeacherCache | None = None
    cache_build_s: float | None = None
    cache_dir: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def resolve_teacher(args: argparse.Namespace, scratch: Path) -> Path:
    if args.tiny:
        if args.rss_child and args.teacher != common.DEFAULT_TEACHER:
            return Path(args.teacher)
        directory = common.make_tiny_teacher(scratch / "tiny-teacher", num_layers=max(4, args.student_layers),
                                             max_positions=max(160, args.length + 8))
        args.teacher = str(directory)
        return directory
    path = Path(args.teacher)
    if not (path / "config.json").is_file():
        raise SystemExit(
            f"teacher {path} not found: train it with `gkd example-teacher` (make example-teacher), pass "
            "--teacher DIR, or use --tiny for a tiny random teacher"
        )
    if args.random_teacher is not None:
        layers, hidden = args.random_teacher_shape
        path = common.make_random_teacher_like(path, scratch / "random-teacher", num_layers=layers, hidden=hidden,
                                               seed=args.seed)
        args.teacher_description = f"random {layers}x{hidden} (tokenizer and labels of {args.teacher})"
        args.teacher = str(path)  # the peak-RSS subprocesses load the same directory
        args.random_teacher = None
    return path


def load_texts(args: argparse.Namespace, needed: int) -> tuple[list[str], list[str]]:
    if args.synthetic_data:
        rows = common.synthetic_rows(needed, seed=args.seed)
        return [t for t, _ in rows], [label for _, label in rows]
    examples = common.read_split(common.movie_review_split_files(args.data_dir)["train"])
    examples = [e for e in examples if e.text.strip() and e.label is not None]
    if len(examples) < needed:  # cycle: the timing needs shapes, not distinct rows
        examples = (examples * math.ceil(needed / len(examples)))[:needed]
    return [e.text for e in examples[:needed]], [str(e.label) for e in examples[:needed]]


def make_workload(shape: str, args: argparse.Namespace, teacher: Teacher, labels: list[str]) -> Workload:
    batch, length = args.batch_size, args.length
    rounds = args.warmup + args.steps
    index = {name: i for i, name in enumerate(labels)}
    if shape == "bucketed":
        count = batch * max(rounds, args.epoch_batches)
        texts, names = load_texts(args, count)
        dataset = encode(teacher.tokenizer, texts, None, [index[n] for n in names], length)
        batches = epoch_batches(dataset.lengths(), batch, args.seed, 0, bucketing=True)
    elif shape == "padded":
        texts, names = load_texts(args, batch * rounds)
        dataset = dataclasses.replace(encode(teacher.tokenizer, texts, None, [index[n] for n in names], length),
                                      pad_to=length)
        batches = [list(range(i, i + batch)) for i in range(0, len(dataset), batch)]
    else:  # packed: join consecutive texts until each row has `length` real tokens
        texts, names = load_texts(args, batch * rounds * 8)
        packed, packed_labels, current = [], [], []
        for text, name in zip(texts, names, strict=True):
            current.append(text)
            if len(teacher.tokenizer(" ".join(current))["input_ids"]) >= length:
                packed.append(" ".join(current))
                packed_labels.append(index[name])
                current = []
            if len(packed) == batch * rounds:
                break
        dataset = dataclasses.replace(encode(teacher.tokenizer, packed, None, packed_labels, length), pad_to=length)
        batches = [list(range(i, i + batch)) for i in range(0, len(dataset), batch)]
    lengths = dataset.lengths()
    widths = [dataset.pad_to or int(max(lengths[b])) for b in batches]
    real = sum(int(lengths[b].sum()) for b in batches)
    stats = {
        "examples": len(dataset), "batches": len(batches), "mean_width": sum(widths) / len(widths),
        "real_token_fraction": real / sum(w * len(b) for w, b in zip(widths, batches, strict=True)),
        "mean_real_length": float(lengths.mean()),
    }
    return Workload(shape, dataset, batches, stats=stats)


def build_workload_cache(work: Workload, teacher: Teacher, pad_id: int, root: Path, device: torch.device) -> None:
    work.cache_dir = root / f"cache-{work.shape}"
    start = time.perf_counter()
    work.cache = build_cache(teacher.model, work.dataset, work.cache_dir, device=device, pad_id=pad_id)
    work.cache_build_s = time.perf_counter() - start


def make_variant(method: str, cached: bool, args: argparse.Namespace, teacher: Teacher, labels: list[str],
                 scratch: Path) -> Variant:
    config = DistillConfig.parse({
        "method": method,
        "teacher": str(args.teacher),
        "student": {"num_layers": args.student_layers},
        "data": {"train": "unused.csv"},
        # the gradient terms at full weight from the first step: every measured step is the method's whole step
        "hyperparameters": {"batch_size": args.batch_size, "max_length": args.length, "epochs": 1,
                            "beta": 1.0, "gamma": 1.0, "seed": args.seed, "warmup_ratio": 0.0,
                            "gradient_start_ratio": 0.0, "gradient_warmup_ratio": 0.0,
                            "gradient_term_cap": args.gradient_term_cap,
                            "gradient_term_cap_every": args.gradient_term_cap_every},
        "run": {"output_dir": str(scratch / f"run-{method}-{int(cached)}"), "device": args.device,
                "precision": args.precision, "cache": "auto" if cached else "off"},
    })
    if config.run.reuse_freed_memory:  # the process setting Trainer.setup() makes before its first step
        reuse_freed_memory()
    trainer = Trainer(config, teacher=teacher)
    torch.manual_seed(args.seed)
    run = trainer.start(teacher, labels, {"train": EncodedDataset([], [], [])}, {"train": None})
    # long schedule: the learning rate stays near its peak during the benchmark
    run.total_steps = 10_000
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, linear_schedule(run.total_steps, 0))
    run.student.train()
    return Variant(method, cached, trainer, run)


def variant_keys(methods: Sequence[str]) -> list[tuple[str, bool]]:
    keys: list[tuple[str, bool]] = []
    for method in methods:
        if method_properties(method).teacher_logits:
            keys += [(method, False), (method, True)]
        else:
            keys.append((method, False))
    return keys


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- measurements
def measure_steps(work: Workload, variants: list[Variant], args: argparse.Namespace, teacher: Teacher,
                  pad_id: int, device: torch.device) -> tuple[dict[str, list[float]], dict[str, list[bool]]]:
    """Shuffled round-robin: in round r every variant trains on batch r. Returns ms per measured step and,
    per step, whether it measured the gradient-term cap's scale (the dearer steps of a capped run)."""
    rng = random.Random(args.seed)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    cap_measured: dict[str, list[bool]] = {v.name: [] for v in variants}
    order = list(variants)
    for round_index in range(args.warmup + args.steps):
        indices = work.batches[round_index % len(work.batches)]
        rng.shuffle(order)
        for variant in order:
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            variant.step(work, indices)
            _sync(device)
            elapsed = (time.perf_counter() - start) * 1000
            if round_index >= args.warmup:
                times[variant.name].append(elapsed)
                if device.type == "cuda":  # includes every variant's resident weights and optimiser state
                    peak = torch.cuda.max_memory_allocated(device) / 2**20
                    variant.cuda_peak_mb = max(variant.cuda_peak_mb or 0.0, peak)
                cap = variant.run.cap
                cap_measured[variant.name].append(bool(cap and cap.measured_this_step))
        if not args.quiet:
            print(f"  [{work.shape}] round {round_index + 1}/{args.warmup + args.steps} done", flush=True)
    return times, cap_measured


def measure_epochs(work: Workload, cached: Variant, uncached: Variant, args: argparse.Namespace, teacher: Teacher,
                   pad_id: int, device: torch.device) -> dict[str, Any]:
    """Whole epochs over the subset with the cache and without; seconds per epoch.

    The two runs are interleaved batch by batch (alternating which goes first), so load that drifts on a
    shared machine falls on both alike; an epoch's time is the sum of its step times (the trainer's loop
    adds nothing measurable on top).
    """
    batches = epoch_batches(work.dataset.lengths(), args.batch_size, args.seed, 0, bucketing=True)
    batches = batches[: args.epoch_batches]
    result: dict[str, list[float]] = {"cached_s": [], "uncached_s": []}
    for _ in range(args.epoch_repeats):
        totals = {"cached_s": 0.0, "uncached_s": 0.0}
        for number, indices in enumerate(batches):
            pair = [(cached, "cached_s"), (uncached, "uncached_s")]
            for variant, key in pair if number % 2 == 0 else pair[::-1]:
                _sync(device)
                start = time.perf_counter()
                variant.step(work, indices)
                _sync(device)
                totals[key] += time.perf_counter() - start
        for key, total in totals.items():
            result[key].append(total)
    cached_s, uncached_s = common.median(result["cached_s"]), common.median(result["uncached_s"])
    build = work.cache_build_s or 0.0
    examples = sum(len(b) for b in batches)
    build_share = build * examples / len(work.dataset)  # the build covered the whole pool
    return {
        "method": cached.method, "shape": "bucketed (real lengths, trainer's length bucketing)",
        "batches": len(batches), "examples": examples, "repeats": args.epoch_repeats,
        "interleaved": "batch by batch", "evaluation_included": False, **result,
        "median_cached_s": cached_s, "median_uncached_s": uncached_s,
        "speedup": uncached_s / cached_s if cached_s else float("nan"),
        "cache_build_s": build,
        "cache_build_examples": len(work.dataset),
        "speedup_first_epoch_with_build": uncached_s / (cached_s + build_share) if cached_s else float("nan"),
        "speedup_4_epochs_with_build": (4 * uncached_s) / (4 * cached_s + build_share) if cached_s else float("nan"),
    }


def phase_breakdown(work: Workload, variants: dict[tuple[str, bool], Variant], teacher: Teacher, pad_id: int,
                    device: torch.device, repeats: int = 3) -> dict[str, Any]:
    """Where a step spends its time, replayed with the library's public pieces (ms, medians of `repeats`)."""
    batch = collate(work.dataset, work.batches[0], pad_id).to(device)
    out: dict[str, Any] = {}
    for key in [("gradient_kd", True), ("gradient_kd", False), ("kd", False)]:
        variant = variants.get(key)
        if variant is not None:
            samples: dict[str, list[float]] = {}
            variant.use(work)
            for _ in range(repeats):
                _replay_step(variant, batch, device, samples)
            phases = {name: common.median(values) for name, values in samples.items()}
            out[variant.name] = {**phases, "total_ms": sum(phases.values())}
    return out


def _replay_step(variant: Variant, batch: Any, device: torch.device, samples: dict[str, list[float]]) -> None:
    """The trainer's step for `gradient_kd`/`kd` (vector form), cut into timed phases."""
    hp, run = variant.trainer.config.hyperparameters, variant.run

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        _sync(device)
        start = time.perf_counter()
        value = fn()
        _sync(device)
        samples.setdefault(name, []).append((time.perf_counter() - start) * 1000)
        return value

    run.optimizer.zero_grad(set_to_none=True)
    needs_grads = method_properties(variant.method).input_gradients
    targets = timed("cache_targets" if variant.cached else "teacher_targets",
                    lambda: run.teacher_targets(batch, "train", needs_grads))
    result = timed("student_forward", lambda: forward(run.student, batch))
    loss = timed("kd_loss", lambda: losses.kd_loss(result.logits, targets.logits, batch.labels,
                                                   temperature=hp.temperature, alpha=hp.alpha,
                                                   reduction=hp.kl_reduction)[0])
    if needs_grads:
        def input_gradient() -> torch.Tensor:
            signal = losses.confidence_signal(result.logits)
            return torch.autograd.grad(signal, [result.embedding_output], create_graph=True)[0]

        grad = timed("input_gradient_create_graph", input_gradient)
        term = timed("gradient_loss",
                     lambda: losses.gradient_alignment_loss(targets.unit_gradients, grad, batch.attention_mask))
        loss = loss + hp.beta * term
    timed("backward", loss.backward)

    def optimise() -> None:
        params = [p for p in run.student.parameters() if p.requires_grad]
        if hp.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()

    timed("clip_and_adamw", optimise)


def profile_steps(work: Workload, variants: dict[tuple[str, bool], Variant], teacher: Teacher, pad_id: int,
                  rows: int = 15) -> dict[str, str]:
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    for key in [("gradient_kd", True), ("kd", False)]:
        variant = variants.get(key)
        if variant is None:
            continue
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            variant.step(work, work.batches[0])
        tables[variant.name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return tables


# ---------------------------------------------------------------- peak RSS (one subprocess per variant)
def rss_child(args: argparse.Namespace) -> int:
    method, cached_flag = args.rss_child.split(":")
    cached = cached_flag == "1"
    device = resolve_device(args.device)
    scratch = Path(tempfile.mkdtemp(prefix="gkd-bench-rss-"))
    try:
        teacher = load_teacher(resolve_teacher(args, scratch), device=device)
        labels = teacher.labels
        args.epoch_batches = 0
        work = make_workload(args.shape_list[0], args, teacher, labels)
        if cached and args.cache_path:
            work.cache = TeacherCache.open(Path(args.cache_path))
        variant = make_variant(method, cached, args, teacher, labels, scratch)
        setup = common.peak_rss_mb()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(args.rss_steps):
            variant.step(work, work.batches[i % len(work.batches)])
        cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        print(json.dumps({"method": method, "cached": cached, "peak_rss_mb": common.peak_rss_mb(),
                          "setup_peak_rss_mb": setup, "cuda_peak_mb": cuda_peak}))
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure_rss(args: argparse.Namespace, work: Workload, keys: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    rows = []
    for method, cached in keys:
        command = [
            sys.executable, "-m", "benchmarks.train_step", "--rss-child", f"{method}:{int(cached)}",
            "--teacher", str(args.teacher), "--batch-size", str(args.batch_size), "--length", str(args.length),
            "--steps", str(args.rss_steps), "--warmup", "0", "--student-layers", str(args.student_layers),
            "--data-dir", str(args.data_dir), "--device", args.device, "--precision", args.precision,
            "--shapes", work.shape,
            "--seed", str(args.seed), "--rss-steps", str(args.rss_steps),
        ]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.tiny:
            command.append("--tiny")
        if args.synthetic_data:
            command.append("--synthetic-data")
        if cached and work.cache_dir is not None:
            command += ["--cache-path", str(work.cache_dir)]
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parent.parent)
        if done.returncode != 0:
            rows.append({"method": method, "cached": cached, "error": done.stderr.strip()[-2000:]})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


# ---------------------------------------------------------------- reporting
def step_cost(values: list[float], cap_measured: list[bool], every: int) -> float:
    """ms per step in the long run: the median, or for a run whose cap measures every `every` steps the
    medians of both kinds of step weighted by how often each comes (the sample holds few measuring steps)."""
    dear = [v for v, m in zip(values, cap_measured, strict=True) if m]
    cheap = [v for v, m in zip(values, cap_measured, strict=True) if not m]
    if not dear or not cheap or every <= 1:
        return common.median(values)
    return (common.median(dear) + (every - 1) * common.median(cheap)) / every


def summarise(times: dict[str, list[float]], variants: list[Variant],
              cap_measured: dict[str, list[bool]] | None = None) -> list[dict[str, Any]]:
    measured = cap_measured or {}
    flags = {v.name: measured.get(v.name) or [False] * len(times[v.name]) for v in variants}
    costs = {v.name: step_cost(times[v.name], flags[v.name], v.run.cap.every if v.run.cap else 1) for v in variants}
    baseline = costs.get("kd", float("nan"))
    rows = []
    for variant in variants:
        values = times[variant.name]
        med = costs[variant.name]
        rows.append({
            "method": variant.method,
            "cached": variant.cached if variant.uses_teacher else None,
            "variant": variant.name,
            "ms_per_step": med,  # = median_ms unless the cap measures on some steps (step_cost)
            "median_ms": common.median(values),
            "min_ms": min(values) if values else float("nan"),
            "max_ms": max(values) if values else float("nan"),
            "times_ms": values,
            "cap_measuring_steps": sum(flags[variant.name]),
            "ratio_to_kd_uncached": med / baseline if baseline and not math.isnan(baseline) else None,
            "cuda_peak_mb": variant.cuda_peak_mb,
        })
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def step_table(rows: list[dict[str, Any]], memory: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["method", "cache", "ms/step", "min", "max", "x kd (no cache)", "peak RSS MiB"]
    body = []
    for row in rows:
        mem = memory.get(row["variant"], {})
        body.append([
            row["method"], {True: "yes", False: "no", None: "-"}[row["cached"]], _fmt(row["ms_per_step"]),
            _fmt(row["min_ms"]), _fmt(row["max_ms"]), _fmt(row["ratio_to_kd_uncached"], 2),
            _fmt(mem.get("peak_rss_mb"), 0),
        ])
    return headers, body


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for shape, data in report["shapes"].items():
        by_name = {row["variant"]: row for row in data["results"]}
        if "gradient_kd+cache" in by_name and "kd" in by_name:
            ratio = by_name["gradient_kd+cache"]["ratio_to_kd_uncached"]
            targets.append({"name": f"gradient_kd cached <= {TARGET_STEP_RATIO}x uncached kd ({shape})",
                            "value": ratio, "threshold": TARGET_STEP_RATIO,
                            "pass": ratio is not None and ratio <= TARGET_STEP_RATIO})
        if "gradient_kd+cache" in by_name and "gradient_kd" in by_name:
            speedup = by_name["gradient_kd"]["ms_per_step"] / by_name["gradient_kd+cache"]["ms_per_step"]
            data["gradient_kd_step_speedup_from_cache"] = speedup
    epoch = report.get("epoch")
    if epoch:
        targets.append({"name": f"cached gradient_kd epoch >= {TARGET_EPOCH_SPEEDUP}x faster than uncached "
                                f"({epoch['batches']} batches, bucketed)",
                        "value": epoch["speedup"], "threshold": TARGET_EPOCH_SPEEDUP,
                        "pass": epoch["speedup"] >= TARGET_EPOCH_SPEEDUP})
    return targets


def render(report: dict[str, Any], markdown: bool) -> str:
    table = common.markdown_table if markdown else common.text_table
    memory = {m["method"] + ("+cache" if m.get("cached") and method_properties(m["method"]).teacher_logits else ""): m
              for m in report.get("memory", [])}
    s = report["settings"]
    parts = []
    if markdown:
        parts += ["# train_step benchmark", "", common.environment_markdown(report["environment"]), ""]
    parts.append(
        f"teacher {s['teacher']} ({s['teacher_layers']} layers x {s['teacher_hidden']}), student "
        f"{s['student_layers']} layers, batch {s['batch_size']}, device {s['device']}, torch threads "
        f"{report['environment']['torch_threads']}; gradient-term cap {s.get('gradient_term_cap')} measured every "
        f"{s.get('gradient_term_cap_every', 1)} step(s); {s['warmup']} warm-up + {s['steps']} measured steps per "
        "variant, shuffled round-robin, medians. Peak RSS: one subprocess per variant "
        f"({s['rss_steps']} steps, first shape)."
    )
    for shape, data in report["shapes"].items():
        st = data["stats"]
        headers, body = step_table(data["results"], memory if shape == report.get("memory_shape") else {})
        title = (f"{shape}: {st['batches']} batches, mean width {st['mean_width']:.1f}, real-token fraction "
                 f"{st['real_token_fraction']:.2f}; cache build {_fmt(data.get('cache_build_s'), 2)} s for "
                 f"{st['examples']} examples")
        parts += ["", f"## {title}" if markdown else title, "", table(headers, body)]
        if data.get("gradient_kd_step_speedup_from_cache"):
            parts.append(f"\ngradient_kd step: cache makes it {data['gradient_kd_step_speedup_from_cache']:.2f}x "
                         "faster")
    epoch = report.get("epoch")
    if epoch:
        parts += ["", "## epoch (gradient_kd)" if markdown else "epoch (gradient_kd):", "",
                  f"{epoch['batches']} batches / {epoch['examples']} examples of the training split, bucketed, "
                  f"evaluation excluded, median of {epoch['repeats']}: uncached {epoch['median_uncached_s']:.2f} s, "
                  f"cached {epoch['median_cached_s']:.2f} s, speedup {epoch['speedup']:.2f}x. Cache build "
                  f"{epoch['cache_build_s']:.2f} s for {epoch['cache_build_examples']} examples (once per teacher "
                  f"and data); including the build: first epoch "
                  f"{epoch.get('speedup_first_epoch_with_build', float('nan')):.2f}x, "
                  f"4 epochs {epoch['speedup_4_epochs_with_build']:.2f}x."]
    if report.get("phases"):
        phase_names = sorted({k for v in report["phases"].values() for k in v if k != "total_ms"})
        headers = ["variant", *phase_names, "total_ms"]
        body = [[name, *(_fmt(v.get(p)) for p in phase_names), _fmt(v["total_ms"])]
                for name, v in report["phases"].items()]
        parts += ["", "## phases of one step (ms, padded shape, batch 0)" if markdown else "phases (ms):", "",
                  table(headers, body)]
    memory_errors = [m for m in report.get("memory", []) if "error" in m]
    if memory_errors:
        parts += ["", f"peak RSS failed for {[m['method'] for m in memory_errors]}"]
    parts += common.targets_section(report["targets"], markdown, lambda value: _fmt(value, 2))
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    common.set_module_name("benchmarks.train_step")  # the module-level name is the last imported script's
    args = parse_args(argv)
    threads = common.set_threads(args.threads)
    if args.rss_child:
        raise SystemExit(rss_child(args))
    device = resolve_device(args.device)
    scratch = Path(tempfile.mkdtemp(prefix="gkd-bench-step-"))
    try:
        teacher_dir = resolve_teacher(args, scratch)
        teacher = load_teacher(teacher_dir, device=device)
        labels = teacher.labels
        pad_id = int(teacher.tokenizer.pad_token_id or 0)
        teacher_layers = int(teacher.model.config.num_hidden_layers)
        if args.student_layers > teacher_layers:
            raise SystemExit(f"--student-layers {args.student_layers} exceeds the teacher's {teacher_layers}")
        keys = variant_keys(args.method_list)
        variants = {key: make_variant(*key, args, teacher, labels, scratch) for key in keys}
        ordered = [variants[key] for key in keys]
        report: dict[str, Any] = {
            "benchmark": "train_step",
            "environment": common.environment(argv),
            "settings": {
                "batch_size": args.batch_size, "length": args.length, "steps": args.steps, "warmup": args.warmup,
                "student_layers": args.student_layers,
                "teacher": args.teacher_description or str(args.teacher),
                "teacher_layers": teacher_layers, "teacher_hidden": int(teacher.model.config.hidden_size),
                "methods": args.method_list, "shapes": args.shape_list, "device": str(device), "threads": threads,
                "precision": args.precision,
                "rss_steps": args.rss_steps, "data": "synthetic" if args.synthetic_data else str(args.data_dir),
                "beta": 1.0, "gamma": 1.0, "gradient_term_cap": args.gradient_term_cap,
                "gradient_term_cap_every": args.gradient_term_cap_every,
            },
            "shapes": {},
        }
        workloads = {}
        for shape in args.shape_list:
            work = make_workload(shape, args, teacher, labels)
            build_workload_cache(work, teacher, pad_id, scratch, device)
            workloads[shape] = work
            print(f"[{shape}] {work.stats}; cache built in {work.cache_build_s:.2f} s", flush=True)
            times, cap_measured = measure_steps(work, ordered, args, teacher, pad_id, device)
            rows = summarise(times, ordered, cap_measured)
            report["shapes"][shape] = {"stats": work.stats, "cache_build_s": work.cache_build_s, "results": rows}
            for row in rows:
                print(f"  {row['variant']:<22} {row['ms_per_step']:9.1f} ms  x{_fmt(row['ratio_to_kd_uncached'], 2)}",
                      flush=True)
            common.write_json_atomic(Path(args.out).with_suffix(".partial.json"), report)  # survives a kill
        if args.epoch_batches and ("gradient_kd", True) in variants:
            work = workloads.get("bucketed")
            if work is None or len(work.batches) < args.epoch_batches:
                work = make_workload("bucketed", args, teacher, labels)
                build_workload_cache(work, teacher, pad_id, scratch, device)
            report["epoch"] = measure_epochs(work, variants[("gradient_kd", True)], variants[("gradient_kd", False)],
                                             args, teacher, pad_id, device)
            print(f"[epoch] uncached {report['epoch']['median_uncached_s']:.2f} s, cached "
                  f"{report['epoch']['median_cached_s']:.2f} s", flush=True)
        first = workloads[args.shape_list[0]] if args.shape_list else None
        if args.phases and first is not None and ("gradient_kd", True) in variants:
            report["phases"] = phase_breakdown(first, variants, teacher, pad_id, device)
        if args.profile and first is not None:
            report["profile"] = profile_steps(first, variants, teacher, pad_id)
        del variants, ordered
        if not args.no_rss and first is not None:
            report["memory_shape"] = first.shape
            report["memory"] = measure_rss(args, first, keys)
        report["targets"] = evaluate_targets(report)
        out = Path(args.out)
        common.write_json_atomic(out, report)
        out.with_suffix(".partial.json").unlink(missing_ok=True)
        text = render(report, markdown=False)
        out.with_suffix(".md").write_text(render(report, markdown=True), encoding="utf-8")
        print()
        print(text)
        if report.get("profile"):
            for name, table in report["profile"].items():
                print(f"profile {name}:\n{table}")
        print(f"wrote {out} and {out.with_suffix('.md')}")
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
