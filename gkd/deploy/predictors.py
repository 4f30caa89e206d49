"""One way to run a classifier directory, PyTorch or ONNX: `load_predictor(path)` gives a `Predictor` whose `logits`
take the same padded numpy batch, so accuracy and speed are measured by the same code for every runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gkd.deploy.feeds import ONNX_FILE, Feeds, input_names, is_onnx_dir, select
from gkd.deploy.runtime import require
from gkd.export.checkpoint import read_card


class Predictor(Protocol):
    """A loaded classifier: its label names, tokenizer and logits for a padded batch."""

    name: str
    runtime: str  # "pytorch", "onnx-fp32" or "onnx-int8"
    labels: list[str]
    tokenizer: Any
    directory: Path

    def logits(self, batch: Feeds) -> np.ndarray:
        """Logits [batch, labels] of right-padded int64 `input_ids`, `attention_mask`, `token_type_ids`."""
        ...


def directory_size(path: Path) -> int:
    """Bytes of every file in a model directory (weights, tokenizer, config, card): what a deployment ships."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class TorchPredictor:
    """A Hugging Face directory run by PyTorch, with transformers' default (fastest) attention, no gradients."""

    runtime = "pytorch"

    def __init__(self, directory: str | Path, *, name: str | None = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        from gkd.models.teacher import check_model_dir, load_tokenizer

        self.directory = Path(directory)
        check_model_dir(self.directory)
        self._torch = torch
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(self.directory), use_safetensors=True, trust_remote_code=False).eval()
        config: Any = self.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.tokenizer = load_tokenizer(self.directory)
        self.inputs = input_names(self.model)
        self.name = name or self.directory.name

    def logits(self, batch: Feeds) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            feeds = {k: torch.from_numpy(v) for k, v in select(batch, self.inputs).items()}
            return self.model(**feeds).logits.float().numpy()


class OnnxPredictor:
    """An ONNX directory (`gkd export-onnx`) run by ONNX Runtime on the CPU."""

    def __init__(self, directory: str | Path, *, name: str | None = None, threads: int | None = None) -> None:
        from gkd.models.teacher import load_tokenizer

        ort = require("onnxruntime")
        self.directory = Path(directory)
        card = read_card(self.directory)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.directory / ONNX_FILE), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.labels = list(card.get("labels") or _config_labels(self.directory))
        self.tokenizer = load_tokenizer(self.directory)
        self.runtime = f"onnx-{card.get('precision') or 'fp32'}"
        self.name = name or self.directory.name

    def logits(self, batch: Feeds) -> np.ndarray:
        return self.session.run(["logits"], select(batch, self.inputs))[0].astype(np.float32)


def _config_labels(directory: Path) -> list[str]:
    import json

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    return [id2label[str(i)] for i in range(len(id2label))]


def load_predictor(path: str | Path, *, name: str | None = None, threads: int | None = None) -> Predictor:
    """ONNX Runtime for a directory with model.onnx, PyTorch for a Hugging Face directory (checked as any load)."""
    if is_onnx_dir(path):
        return OnnxPredictor(path, name=name, threads=threads)
    return TorchPredictor(path, name=name)
