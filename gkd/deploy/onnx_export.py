"""A classifier directory (a student, or any supported teacher) as an ONNX directory, optionally int8-quantised.

The exporter is `torch.onnx.export` with the TorchScript tracer (`dynamo=False`): it needs no package beyond torch
and onnx, handles every encoder family in gkd.models.families with dynamic batch and sequence axes, and its graphs
quantise cleanly with ONNX Runtime's `quantize_dynamic` (docs/onnx.md, "Decisions"). The directory holds
`model.onnx`, config.json (label names), the tokenizer files and `gkd_card.json` with the verification: on a sample
the ONNX logits are compared with the PyTorch model's before the directory appears (fp32 must agree within
`FP32_TOLERANCE`; int8 reports its label agreement).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from gkd.data.batching import EncodedDataset, encode
from gkd.data.readers import read_examples
from gkd.deploy.feeds import ONNX_FILE, batches_of, input_names, is_onnx_dir, onnx_logits, select
from gkd.deploy.runtime import require
from gkd.export.checkpoint import CARD_NAME, read_card, staged_directory
from gkd.models.families import ModelError
from gkd.models.teacher import check_model_dir, load_tokenizer
from gkd.versions import versions

DEFAULT_OPSET = 17
FP32_TOLERANCE = 1e-4
SAMPLE_SIZE = 64
Quantize = Literal["int8"]

# Used when no data is given: varied lengths and vocabulary, so both dynamic axes are exercised.
_BUILTIN_SAMPLE = [
    "A quiet, beautifully acted film that stays with you.",
    "Dull.",
    "The plot wanders for an hour before anything happens, and then it ends abruptly without explaining itself.",
    "I laughed, I cried, and I would watch it again tomorrow.",
    "Not worth the ticket price; the sequel is better in every way.",
    "An uneven script, but the lead performance is extraordinary and the music is lovely.",
    "What a mess.",
    "The cinematography is stunning, though the dialogue often feels wooden and the pacing drags in the middle act.",
    "Charming and funny from start to finish.",
    "It tries hard to be clever and mostly succeeds.",
    "Two hours I will never get back.",
    "A modest, honest little story told with care.",
]


class ExportError(ValueError):
    """The directory cannot be exported, or the exported model does not reproduce the PyTorch model."""


def load_for_export(model_dir: str | Path) -> tuple[PreTrainedModel, Any]:
    """The classifier and its tokenizer, after the checks every load makes (safetensors, no remote code, a head)."""
    model_dir = Path(model_dir)
    if is_onnx_dir(model_dir):
        raise ExportError(f"{model_dir} is already an ONNX directory; export its PyTorch source instead")
    try:
        config = check_model_dir(model_dir)
    except ModelError as exc:
        raise ExportError(f"{model_dir} cannot be exported: {exc}") from exc
    if not config.get("id2label") and not config.get("num_labels"):
        raise ExportError(f"{model_dir} has no classification head (no id2label in config.json)")
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), attn_implementation="eager", use_safetensors=True, trust_remote_code=False
    )
    return model.eval(), load_tokenizer(model_dir)


class _Logits(torch.nn.Module):
    """The classifier with positional inputs and one output, the logits (what the tracer records)."""

    def __init__(self, model: PreTrainedModel, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).logits


def sample_dataset(tokenizer: Any, data_file: str | Path | None, max_length: int,
                   size: int = SAMPLE_SIZE) -> EncodedDataset:
    """Up to `size` rows of `data_file` (labels ignored) tokenised; without a file, a built-in set of sentences."""
    if data_file is not None:
        examples = [e for e in read_examples(data_file, require_labels=False).examples if e.text.strip()][:size]
        if not examples:
            raise ExportError(f"{data_file} has no non-empty text to verify the export on")
        pairs = [e.text_pair for e in examples] if any(e.text_pair for e in examples) else None
        return encode(tokenizer, [e.text for e in examples], pairs, [0] * len(examples), max_length)
    texts = _BUILTIN_SAMPLE[:size]
    return encode(tokenizer, texts, None, [0] * len(texts), max_length)


def _trace(model: PreTrainedModel, path: Path, opset: int, tokenizer: Any) -> list[str]:
    names = input_names(model)
    example = tokenizer(["a short example", "a second, somewhat longer example sentence"], padding=True,
                        return_tensors="pt")
    args = tuple(example[n] if n in example else torch.zeros_like(example["input_ids"]) for n in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes (checked below)
        torch.onnx.export(
            _Logits(model, names).eval(), args, str(path), dynamo=False, input_names=names, output_names=["logits"],
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
        )
    model.eval()  # the exporter restores the wrapper's mode afterwards: dropout must stay off for verification
    return names


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic quantisation: int8 weights of MatMul/Gemm, activations quantised per call."""
    quantization = require("onnxruntime.quantization")
    quantization.quantize_dynamic(str(source), str(target), weight_type=quantization.QuantType.QInt8)


def torch_logits(model: PreTrainedModel, dataset: EncodedDataset, pad_id: int, batch_size: int = 16) -> np.ndarray:
    names = input_names(model)
    out = []
    with torch.no_grad():
        for batch in batches_of(dataset, batch_size, pad_id):
            feeds = select(batch, names)
            out.append(model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def verify(reference: np.ndarray, exported: np.ndarray, precision: str, tolerance: float) -> dict[str, Any]:
    """How closely the exported logits follow the PyTorch model's on the sample."""
    diff = float(np.max(np.abs(reference - exported))) if reference.size else 0.0
    agreement = float(np.mean(reference.argmax(-1) == exported.argmax(-1))) if reference.size else 1.0
    result: dict[str, Any] = {"examples": int(reference.shape[0]), "max_abs_logit_diff": diff,
                              "label_agreement": agreement}
    if precision == "fp32":
        result |= {"tolerance": tolerance, "passed": diff <= tolerance}
    return result


def export_onnx(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    quantize: Quantize | None = None,
    opset: int = DEFAULT_OPSET,
    sample: EncodedDataset | None = None,
    data_file: str | Path | None = None,
    max_length: int = 128,
    tolerance: float = FP32_TOLERANCE,
    extra_card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export `model_dir` to `out_dir` (replaced atomically; nothing is left behind on failure); returns the card.

    The sample is `sample`, else rows of `data_file`, else built-in sentences. fp32 logits further than
    `tolerance` from PyTorch's refuse the export (`ExportError`); int8 records its agreement and keeps going."""
    require("onnx")
    ort = require("onnxruntime")
    if not 7 <= opset <= 21:
        raise ExportError(f"opset {opset} is outside the range this exporter supports (7 to 21)")
    model, tokenizer = load_for_export(model_dir)
    pad_id = int(tokenizer.pad_token_id or 0)
    sample = sample if sample is not None else sample_dataset(tokenizer, data_file, max_length)
    out_dir = Path(out_dir)
    with staged_directory(out_dir) as tmp:
        fp32_path = tmp / (ONNX_FILE if quantize is None else "model.fp32.onnx")
        names = _trace(model, fp32_path, opset, tokenizer)
        if quantize == "int8":
            quantize_int8(fp32_path, tmp / ONNX_FILE)
            fp32_path.unlink()
        model.config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        session = ort.InferenceSession(str(tmp / ONNX_FILE), providers=["CPUExecutionProvider"])
        precision = quantize or "fp32"
        check = verify(torch_logits(model, sample, pad_id), onnx_logits(session, sample, pad_id), precision, tolerance)
        if precision == "fp32" and not check["passed"]:
            raise ExportError(f"the ONNX model's logits differ from PyTorch's by {check['max_abs_logit_diff']:.3g} "
                              f"(tolerance {tolerance:g}) on {check['examples']} examples")
        config: Any = model.config
        labels = [config.id2label[i] for i in range(config.num_labels)]
        source_card = read_card(model_dir)
        card = {
            "versions": {**versions(), "onnx": require("onnx").__version__, "onnxruntime": ort.__version__},
            "format": "onnx",
            "precision": precision,
            "opset": opset,
            "exporter": "torch.onnx.export (TorchScript tracer, dynamo=False)",
            "quantization": "onnxruntime.quantization.quantize_dynamic, QInt8 weights" if quantize else None,
            "inputs": names,
            "dynamic_axes": ["batch", "sequence"],
            "labels": labels,
            # the source by its name, not where a server keeps it (issue 20, finding 12)
            "source": {"directory": Path(model_dir).name, "method": source_card.get("method"),
                       "checkpoint": source_card.get("checkpoint"), "step": source_card.get("step"),
                       "metrics": source_card.get("metrics")},
            "verification": check,
            **(extra_card or {}),
        }
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2, default=str), encoding="utf-8")
    return card


def update_card(directory: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """Merge `values` into a directory's gkd_card.json, replacing the file atomically."""
    path = Path(directory) / CARD_NAME
    card = {**read_card(directory), **values}
    tmp = path.with_name(f".{CARD_NAME}.tmp")
    tmp.write_text(json.dumps(card, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
    return card
