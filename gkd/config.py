"""One declarative description of a distillation run.

`DistillConfig` is shared by the CLI (`gkd distill config.yaml`), the HTTP API (the job body is built
from `StudentSpec` and `Hyperparameters`) and the worker, so every default is written exactly once,
here. Defaults follow the authors' code (shared/docs/GKD.md) unless a measurement made us change them;
those places say so.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

Method = Literal["ce", "kd", "pkd", "gradient_kd", "gradient_kd_cls"]
METHODS: tuple[str, ...] = ("ce", "kd", "pkd", "gradient_kd", "gradient_kd_cls")
GRADIENT_METHODS: frozenset[str] = frozenset({"gradient_kd", "gradient_kd_cls"})
TEACHER_METHODS: frozenset[str] = frozenset({"kd", "pkd", "gradient_kd", "gradient_kd_cls"})
HIDDEN_STATE_METHODS: frozenset[str] = frozenset({"pkd", "gradient_kd_cls"})

InitStrategy = Literal["bottom", "every_other", "random"]
LayerRule = Literal["bottom", "every_other"] | list[int]


def _storable(value: str) -> str:
    """Text that a database can hold and a JSON response can carry: no NUL, no lone UTF-16 surrogate."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ValueError("must be valid Unicode (a lone surrogate is not)")
    return value


StorableText = Annotated[str, AfterValidator(_storable)]
LabelName = Annotated[StorableText, StringConstraints(min_length=1, max_length=200)]


class ConfigError(ValueError):
    """A configuration that cannot run; `param` names the offending field (dotted path)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_layer_indices(value: Any) -> Any:
    if isinstance(value, list):
        if not value:
            raise ValueError("an explicit layer list must not be empty")
        if any(i < 0 for i in value):
            raise ValueError("layer indices are 0-based and must not be negative")
        if len(set(value)) != len(value):
            raise ValueError("layer indices must not repeat")
    return value


class InitFromModel(_Strict):
    """A student started from another pretrained encoder that shares the teacher's tokenizer (docs/teachers.md)."""

    model: StorableText = Field(..., min_length=1, max_length=500,
                       description="The encoder to start from: a model directory, or in the service a registered "
                       "model's id or name.")
    layers: LayerRule = Field("bottom", description="Which of its layers the student keeps: 'bottom', "
                              "'every_other' or a list of 0-based indices.")

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: Any) -> Any:
        return _check_layer_indices(value)


class StudentSpec(_Strict):
    """How the student is cut from the teacher (or from another encoder)."""

    num_layers: int = Field(3, ge=1, le=48, description="Number of encoder layers of the student.")
    init: InitStrategy | list[int] | InitFromModel = Field(
        "bottom",
        description=(
            "Which teacher layers initialise the student: 'bottom' (the first N, as the authors), "
            "'every_other' (DistilBERT style), an explicit list of 0-based teacher layer indices, "
            "'random' (no teacher weights in the encoder), or {\"model\": ..., \"layers\": ...} to start from "
            "another pretrained encoder with the teacher's tokenizer."
        ),
    )
    hidden_size: int | None = Field(
        None,
        ge=8,
        le=8192,
        description="Student width; null keeps the teacher's. A different width starts the encoder fresh "
        "and uses the scalar saliency form of the gradient loss.",
    )
    head: Literal["fresh", "teacher"] = Field(
        "teacher",
        description="'fresh' starts pooler and classifier from scratch (the authors); 'teacher' copies the "
        "teacher's, so the student's confidence and its input gradients are meaningful from step one.",
    )
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Hidden and attention dropout of the student; null means 0 for every method (measured "
        "better than the teacher's 0.1 for ce, kd and pkd on the movie-review benchmark, and the gradient methods "
        "need it: dropout makes the student's input gradients noisy).",
    )
    embeddings: Literal["frozen", "trainable"] | None = Field(
        None,
        description="Whether the embeddings copied from the teacher are trained; null means trainable for every "
        "method. 'frozen' is the authors' choice for the gradient methods (teacher and student gradients are "
        "then taken in exactly the same embedding space). A student of another width always trains its fresh "
        "embeddings.",
    )

    @field_validator("init")
    @classmethod
    def _check_layer_list(cls, value: Any) -> Any:
        return _check_layer_indices(value)

    @model_validator(mode="after")
    def _list_matches_depth(self) -> StudentSpec:
        if isinstance(self.init, list) and len(self.init) != self.num_layers:
            raise ValueError(
                f"init lists {len(self.init)} teacher layers but num_layers is {self.num_layers}"
            )
        if isinstance(self.init, InitFromModel):
            if isinstance(self.init.layers, list) and len(self.init.layers) != self.num_layers:
                raise ValueError(
                    f"init.layers lists {len(self.init.layers)} layers but num_layers is {self.num_layers}"
                )
            if self.hidden_size is not None:
                raise ValueError("hidden_size: a student started from init.model has that model's width; "
                                 "leave hidden_size null")
        return self

    @property
    def base_model(self) -> str | None:
        """The other encoder the student starts from, or None when it is cut from the teacher."""
        return self.init.model if isinstance(self.init, InitFromModel) else None


class Hyperparameters(_Strict):
    """Optimisation and loss settings. Defaults: the authors' code, except where noted."""

    epochs: int = Field(4, ge=1, le=100, description="Passes over the training data.")
    batch_size: int = Field(32, ge=1, le=1024, description="Examples per optimisation step.")
    learning_rate: float = Field(5e-5, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0, description="AdamW weight decay (ours).")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of steps of linear warmup (ours).")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping norm; null disables.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimiser step.")
    max_length: int = Field(128, ge=8, le=4096, description="Tokens per example after truncation.")
    temperature: float = Field(5.0, gt=0.0, le=100.0, description="Softmax temperature T of logit KD.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the KD term; 1 - alpha weights CE.")
    beta: float = Field(
        1.0,
        ge=0.0,
        le=1e6,
        description="Weight of the gradient loss (gradient_kd) or of the PKD term (pkd, gradient_kd_cls). "
        "1 came out of our sweep (benchmarks/results/quality.md): with the delayed start, 0.03 to 10 all land "
        "within 0.2 points of kd's accuracy or above it, and saliency agreement grows with beta up to 1, then "
        "levels off.",
    )
    gamma: float = Field(
        0.3,
        ge=0.0,
        le=1e6,
        description="Weight of the gradient terms of gradient_kd_cls. 0.3 beat 1 in accuracy at 2 and 3 layers "
        "over 3 seeds (benchmarks/results/quality.md); its per-layer [CLS] terms make the whole term larger.",
    )
    kl_reduction: Literal["mean", "batchmean"] = Field(
        "mean",
        description="'mean' averages the KL over batch x classes (the authors' choice); 'batchmean' is the "
        "mathematically clean per-example KL.",
    )
    saliency_form: Literal["auto", "vector", "scalar"] = Field(
        "auto",
        description="'vector' compares unit per-token gradient vectors (the paper; needs equal widths), "
        "'scalar' compares normalised per-token saliency (ours; any width), 'auto' picks by width.",
    )
    gradient_warmup_ratio: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Ramp the weight of the gradient terms linearly from 0 over this fraction of the steps, "
        "after gradient_start_ratio (ours): the student first learns the teacher's outputs, then its saliency.",
    )
    gradient_start_ratio: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Leave the gradient terms out for this fraction of the steps, then start their ramp "
        "(ours): a freshly cut student's input gradients are about 2,000 times smaller than the teacher's, and "
        "a gradient term active from step 0 made the student worse at both accuracy and saliency "
        "(docs/methods.md).",
    )
    gradient_term_cap: float | None = Field(
        1.0,
        gt=0.0,
        le=1e6,
        description="Cap the gradient terms' parameter gradient at this multiple of the logit loss's, per "
        "micro-batch (ours). The unit-normalised gradient loss grows like 1/||student input gradient||, which "
        "is tiny, so uncapped it can drown the logit loss and collapse the student; null gives the paper's "
        "plain sum.",
    )
    gradient_term_cap_per_tensor: bool = Field(
        False,
        description="Apply gradient_term_cap to each parameter tensor on its own instead of to the whole model "
        "(ours; see docs/methods.md).",
    )
    gradient_term_cap_every: int = Field(
        8,
        ge=1,
        le=1_000_000,
        description="Measure the whole-model cap's scale every K optimiser steps and reuse it in between (ours): "
        "measuring needs a second backward pass through the student, a third of a cached gradient_kd step; 1 "
        "measures every step. The per-tensor cap always measures.",
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed of initialisation, data order and dropout.")
    eval_every_steps: int | None = Field(
        None, ge=1, description="Evaluate every K optimiser steps as well as after each epoch."
    )
    length_bucketing: bool = Field(
        True, description="Group examples of similar length into batches to cut padding (ours)."
    )

    @property
    def uses_teacher_logits(self) -> bool:  # pragma: no cover - convenience for readers
        return self.alpha > 0


class DataSpec(_Strict):
    """Where the examples come from (files on disk for the library; the service fills paths in)."""

    train: str = Field(..., description="Training file: CSV, TSV, JSONL or Parquet.")
    dev: str | None = Field(None, description="Dev file; null splits `dev_fraction` off the training data.")
    test: str | None = Field(None, description="Optional test file, evaluated once at the end.")
    dev_fraction: float = Field(0.1, gt=0.0, lt=0.9, description="Share of training rows held out as dev.")
    split_seed: int = Field(42, ge=0, description="Seed of the train/dev split.")
    label_map: dict[LabelName, LabelName] | None = Field(
        None, max_length=1000, description="The data's label names mapped to the teacher's, e.g. "
        "{\"0\": \"negative\"}; integer labels map to a teacher's LABEL_i without one (docs/methods.md)."
    )


class DistillConfig(_Strict):
    """A whole run: method, teacher, student, data, hyperparameters and where results go."""

    method: Method = Field("gradient_kd", description="Training objective (see docs/methods).")
    teacher: str = Field(..., description="Local Hugging Face directory of the fine-tuned teacher.")
    student: StudentSpec = Field(default_factory=StudentSpec)
    data: DataSpec
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    output_dir: str = Field("var/runs/latest", description="Where state, checkpoints and metrics go.")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast precision; 'auto' is bf16 on a CUDA device that supports it, else fp32 "
        "(fp16 runs with a loss scale that covers both backward passes: docs/methods.md)."
    )
    cache: Literal["auto", "off", "refresh"] = Field(
        "auto",
        description="Teacher cache policy: 'auto' reuses or fills it, 'off' runs the teacher every step, "
        "'refresh' recomputes it.",
    )
    cache_dir: str = Field("var/teacher_cache", description="Where teacher caches live.")
    num_threads: int | None = Field(None, ge=1, le=512, description="torch CPU threads; null keeps torch's.")
    reuse_freed_memory: bool = Field(
        True,
        description="On Linux (glibc), keep freed memory in the process for the next step instead of returning it "
        "to the kernel and faulting it in again (ours; about 15 % faster CPU steps in benchmarks/end_to_end.py). "
        "The process keeps its peak memory after training.",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @model_validator(mode="after")
    def _check_method_settings(self) -> DistillConfig:
        hp = self.hyperparameters
        if self.method == "gradient_kd_cls" and self.student.hidden_size is not None:
            raise ValueError(
                "student.hidden_size: gradient_kd_cls compares hidden states and needs the teacher's width: "
                "leave student.hidden_size null or use gradient_kd"
            )
        if self.method == "pkd" and self.student.hidden_size is not None:
            raise ValueError("student.hidden_size: pkd compares hidden states and needs the teacher's width")
        if hp.saliency_form == "vector" and self.student.hidden_size is not None:
            raise ValueError(
                "hyperparameters.saliency_form: 'vector' needs equal widths; use 'scalar' or 'auto'"
            )
        return self

    @classmethod
    def load(cls, path: str | Path) -> DistillConfig:
        """Read a YAML or JSON file; raise `ConfigError` naming the first bad field."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of settings at the top level")
        return cls.parse(raw)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> DistillConfig:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise config_error_from(exc) from exc


def config_error_from(exc: ValidationError) -> ConfigError:
    """The first pydantic error as one readable `ConfigError` with a dotted `param`."""
    first = exc.errors()[0]
    # Union members add their type as a loc entry ("literal['bottom',...]", "list[int]"): not a field name.
    param = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and "[" in p)) or None
    message = first["msg"].removeprefix("Value error, ")
    if param is None:  # cross-field checks name their field as a "dotted.path: " prefix
        named = _FIELD_PREFIX.match(message)
        if named:
            return ConfigError(message, param=named.group(1))
    return ConfigError(f"{param}: {message}" if param else message, param=param)


_FIELD_PREFIX = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+): ")


def embeddings_frozen(config: DistillConfig) -> bool:
    """Whether a student cut from the teacher keeps the teacher's embeddings fixed (only when asked)."""
    return config.student.embeddings == "frozen"


def effective_dropout(config: DistillConfig) -> float:
    """Student dropout: the explicit value, else 0 for every method (docs/methods.md, 'Defaults')."""
    return config.student.dropout if config.student.dropout is not None else 0.0


def layer_map(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """Student layer k -> teacher layer round(k * M / N) for k = 1..N-1 (GKD.md, hidden_states indexing)."""
    return [(k, math.floor(k * teacher_layers / student_layers + 0.5)) for k in range(1, student_layers)]
