"""How honest is the admission estimate? `gkd.training.memory_estimate` against the peak RSS of a real CPU run.

    .venv/bin/python -m benchmarks.memory_estimate --method gradient_kd --batch-size 48 --max-length 256 \
        --teacher-layers 2

Builds a BERT teacher (width 256, 4 heads, FFN 1024, random weights) and rows long enough to fill `max_length`,
trains a 2-layer student for one epoch in this process (fp32, one thread), and prints one JSON line: the RSS after
imports, the peak RSS (`ru_maxrss`), their difference, and the estimate's peak without its fixed runtime term.
Run each case in a fresh process: `ru_maxrss` only grows.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from gkd.config import DistillConfig
from gkd.models.teacher import describe_teacher
from gkd.training.memory_estimate import EncoderShape, JobShape, estimate_job_memory, gib, with_inferred_ffn
from gkd.training.trainer import Trainer
from tests.support.factories import NEGATIVE, NEUTRAL, POSITIVE, VOCAB, write_csv, write_tokenizer

WIDTH, HEADS, STUDENT_LAYERS = 256, 4, 2


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def write_case(root: Path, layers: int, rows: int, max_length: int) -> tuple[Path, Path]:
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=WIDTH, num_hidden_layers=layers,
                        num_attention_heads=HEADS, intermediate_size=4 * WIDTH, max_position_embeddings=512,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(root / "teacher"), safe_serialization=True)
    write_tokenizer(root / "teacher")
    rng = random.Random(0)
    words = NEUTRAL + POSITIVE + NEGATIVE
    data = [{"text": " ".join(rng.choice(words) for _ in range(max_length + 10)),
             "label": "positive" if i % 2 else "negative"} for i in range(rows)]
    return root / "teacher", write_csv(root / "train.csv", data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="gradient_kd")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--teacher-layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gkd-memory-") as tmp:
        root = Path(tmp)
        teacher, train = write_case(root, args.teacher_layers, 4 * args.batch_size, args.max_length)
        config = DistillConfig.parse({
            "method": args.method, "teacher": str(teacher), "student": {"num_layers": STUDENT_LAYERS},
            "data": {"train": str(train), "dev": str(train)},
            "hyperparameters": {"epochs": 1, "batch_size": args.batch_size, "max_length": args.max_length},
            "output_dir": str(root / "run"), "cache_dir": str(root / "cache"), "device": "cpu", "precision": "fp32",
        })
        before = peak_rss()
        Trainer(config).train()
        after = peak_rss()
        info = describe_teacher(teacher)
    shape = with_inferred_ffn(EncoderShape(info.num_layers, info.hidden_size, info.num_attention_heads,
                                           info.vocab_size, info.max_position_embeddings, info.embedding_size,
                                           len(info.labels)), info.num_parameters)
    student = EncoderShape(STUDENT_LAYERS, shape.hidden, shape.heads, shape.vocab, shape.positions, shape.embedding,
                           shape.labels, shape.intermediate)
    estimate = estimate_job_memory(JobShape(shape, student, args.batch_size, args.max_length,
                                            args.method.startswith("gradient"), True, info.num_parameters))
    print(json.dumps({
        "method": args.method, "batch_size": args.batch_size, "max_length": args.max_length,
        "teacher_layers": args.teacher_layers, "rss_after_imports": gib(before), "rss_peak": gib(after),
        "measured_growth": gib(after - before), "estimated": gib(estimate.peak(args.batch_size) - estimate.runtime),
        "estimated_runtime": gib(estimate.runtime),
    }))


if __name__ == "__main__":
    main()
