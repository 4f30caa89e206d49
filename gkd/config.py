"""One declarative description of a distillation run.

`DistillConfig` is shared by the CLI (`gkd distill config.yaml`), the HTTP API (the job body is built
from `StudentSpec` and `Hyperparameters`) and the worker, so every default is written exactly once,
here. What to train (method, teacher, student, data, hyperparameters) is kept apart from where and how
this run executes (`RunSettings`: output directory, device, precision, cache, threads, processes), which
the CLI and the worker fill in. Defaults follow the authors' code (shared/docs/GKD.md) unless a measurement
made us change them; docs/methods.md ("Defaults", "Decisions") says which and why. Field descriptions are
one sentence each: they are the public OpenAPI schema.
"""

from __future__ import annotations

import json
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
    ValidationInfo,
    field_validator,
    model_validator,
)

from gkd.method.properties import Method, method_properties
from gkd.text import unstorable_reason

AUTO_BETA_FALLBACK = 1.0  # what `beta: "auto"` weighs where no probe runs (gkd.training.beta_auto)

InitStrategy = Literal["bottom", "every_other", "random"]
LayerRule = Literal["bottom", "every_other"] | list[int]
ExportFormat = Literal["onnx", "onnx-int8"]


def _storable(value: str) -> str:
    """Text that a database can hold and a JSON response can carry: no NUL, no lone UTF-16 surrogate."""
    reason = unstorable_reason(value)
    if reason is not None:
        raise ValueError(reason)
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
    # NaN and Infinity are no setting: PostgreSQL's JSONB refused them (a 500) where SQLite stored them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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


class InitFromCheckpoint(_Strict):
    """A student that continues from an earlier run's exported checkpoint: all of its layers, weights and head."""

    checkpoint: StorableText = Field(..., min_length=1, max_length=500,
                                     description="The checkpoint to continue from: an exported student directory, "
                                     "or in the service a finished job's checkpoint id.")


def _null_is_default(value: Any, info: ValidationInfo) -> Any:
    """null, which earlier versions stored for 'the default' (job rows, training states), reads as the default."""
    if value is None:
        assert info.field_name is not None
        return StudentSpec.model_fields[info.field_name].default
    return value


class StudentSpec(_Strict):
    """How the student is cut from the teacher (or from another encoder)."""

    num_layers: int = Field(3, ge=1, le=48, description="Number of encoder layers of the student.")
    init: InitStrategy | list[int] | InitFromModel | InitFromCheckpoint = Field(
        "bottom",
        description="Where the student's layers come from: 'bottom' (the teacher's first N), 'every_other', a list "
        "of teacher layers, 'random', {\"model\": ..., \"layers\": ...} (another encoder, same tokenizer) or "
        "{\"checkpoint\": ...} (continue a student).",
    )
    hidden_size: int | None = Field(
        None, ge=8, le=8192,
        description="Student width; null keeps the teacher's, another width starts the encoder fresh.",
    )
    head: Literal["fresh", "teacher"] = Field(
        "teacher", description="Whether pooler and classifier start as copies of the teacher's or fresh.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Hidden and attention dropout of the student.")
    embeddings: Literal["frozen", "trainable"] = Field(
        "trainable", description="Whether the embeddings copied from the teacher are trained.",
    )
    vocabulary: Literal["full", "training_data"] = Field(
        "full",
        description="'training_data' exports the student with only the tokens its training and dev texts use (a "
        "smaller embedding table, a rewritten tokenizer); 'full' keeps the teacher's vocabulary.",
    )

    _null_defaults = field_validator("dropout", "embeddings", "vocabulary", mode="before")(_null_is_default)

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
        if isinstance(self.init, InitFromCheckpoint) and self.hidden_size is not None:
            raise ValueError("hidden_size: a student continued from init.checkpoint has that checkpoint's width; "
                             "leave hidden_size null")
        return self

    @property
    def base_model(self) -> str | None:
        """The other encoder the student starts from, or None when it is cut from the teacher."""
        return self.init.model if isinstance(self.init, InitFromModel) else None

    @property
    def init_checkpoint(self) -> str | None:
        """The checkpoint the student continues from, or None when it is cut from a model."""
        return self.init.checkpoint if isinstance(self.init, InitFromCheckpoint) else None


class Hyperparameters(_Strict):
    """Optimisation and loss settings; docs/methods.md gives each default's source and measurements."""

    epochs: int = Field(4, ge=1, le=100, description="Passes over the training data.")
    batch_size: int = Field(32, ge=1, le=1024, description="Examples per optimisation step.")
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of steps of linear learning-rate warmup.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping norm; null disables.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimiser step.")
    max_length: int = Field(128, ge=8, le=4096, description="Tokens per example after truncation.")
    temperature: float = Field(5.0, gt=0.0, le=100.0, description="Softmax temperature T of logit KD.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the KD term; 1 - alpha weights CE.")
    beta: Annotated[float, Field(ge=0.0, le=1e6)] | Literal["auto"] = Field(
        1.0,
        description="Weight of the gradient loss (gradient_kd) or of the PKD term (pkd, gradient_kd_cls); 'auto' "
        "picks gradient_kd's weight from a short probe on dev when the gradient term starts (1 for other methods).",
    )
    gamma: float = Field(0.3, ge=0.0, le=1e6, description="Weight of the gradient terms of gradient_kd_cls.")
    kl_reduction: Literal["mean", "batchmean"] = Field(
        "mean", description="'mean' averages the KL over batch x classes (the authors'), 'batchmean' per example.",
    )
    saliency_form: Literal["auto", "vector", "scalar"] = Field(
        "auto",
        description="'vector' compares unit per-token gradient vectors (equal widths), 'scalar' normalised per-token "
        "saliency (any width), 'auto' picks by width.",
    )
    gradient_warmup_ratio: float = Field(
        0.3, ge=0.0, le=1.0,
        description="Fraction of the steps over which the gradient terms' weight ramps up from 0, once started.",
    )
    gradient_start_ratio: float = Field(
        0.2, ge=0.0, lt=1.0, description="Fraction of the steps trained before the gradient terms start.",
    )
    accuracy_guard: bool = Field(
        True, description="Start the gradient terms once the student agrees with the teacher, and back them off when "
        "agreement falls (docs/methods.md); false keeps the paper's fixed schedule.",
    )
    gradient_term_cap: float | None = Field(
        1.0, gt=0.0, le=1e6,
        description="Cap on the gradient terms' parameter gradient, as a multiple of the logit loss's; null: no cap.",
    )
    gradient_term_cap_per_tensor: bool = Field(
        False, description="Apply gradient_term_cap to each parameter tensor instead of to the whole model.",
    )
    gradient_term_cap_every: int = Field(
        8, ge=1, le=1_000_000, description="Optimiser steps between measurements of the whole-model cap's scale.",
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed of initialisation, data order and dropout.")
    eval_every_steps: int | None = Field(
        None, ge=1, description="Evaluate every K optimiser steps as well as after each epoch."
    )
    length_bucketing: bool = Field(
        True, description="Group examples of similar length into batches to cut padding."
    )
    n_checkpoints: int = Field(
        0, ge=0, le=100, description="Per-epoch checkpoints kept (the newest N, older ones pruned); 0 keeps none."
    )

    @field_validator("beta", mode="wrap")
    @classmethod
    def _beta_number_or_auto(cls, value: Any, handler: Any) -> Any:
        """One message naming both forms, instead of one error per member of the union."""
        try:
            return handler(value)
        except ValidationError:
            raise ValueError("beta must be a number from 0 to 1e6 or \"auto\"") from None

    @property
    def beta_weight(self) -> float:
        """`beta` as a number: 'auto' weighs as `AUTO_BETA_FALLBACK` until the trainer has chosen."""
        return AUTO_BETA_FALLBACK if self.beta == "auto" else float(self.beta)


class DataSpec(_Strict):
    """Where the examples come from (files on disk for the library; the service fills paths in)."""

    train: str = Field(..., description="Training file: CSV, TSV, JSONL or Parquet.")
    dev: str | None = Field(None, description="Dev file; null splits `dev_fraction` off the training data.")
    test: str | None = Field(None, description="Optional test file, evaluated once at the end.")
    dev_fraction: float = Field(0.1, gt=0.0, lt=0.9, description="Share of training rows held out as dev.")
    split_seed: int = Field(42, ge=0, description="Seed of the train/dev split.")
    label_map: dict[LabelName, LabelName] | None = Field(
        None, max_length=1000, description="The data's label names mapped to the teacher's, e.g. {\"0\": \"negative\"}."
    )


class MlflowIntegration(_Strict):
    """Log the run to MLflow: its settings as params, every step's and evaluation's metrics, and where the trained
    student lies (docs/integrations.md). Needs `pip install mlflow-skinny` (or `mlflow`) where the run trains."""

    type: Literal["mlflow"] = Field(..., description="The tracker: 'mlflow'.")
    tracking_uri: StorableText | None = Field(
        None, max_length=2000,
        description="MLflow tracking URI (http(s)://..., sqlite:///..., a directory); null: MLflow's default "
        "(MLFLOW_TRACKING_URI, else ./mlruns). The service uses its operator's and refuses another.",
    )
    experiment: StorableText = Field(
        "gkd", min_length=1, max_length=250, description="Experiment name; created when missing.")
    run_name: StorableText | None = Field(None, max_length=250, description="Run name; null: MLflow picks one.")
    tags: dict[Annotated[StorableText, StringConstraints(min_length=1, max_length=250)],
               Annotated[StorableText, StringConstraints(max_length=5000)]] = Field(
        default_factory=dict, max_length=50, description="Tags set on the run.")
    artifact_base_uri: StorableText | None = Field(
        None, max_length=2000,
        description="Prefix of the trained student's URI, followed by its kind (best, final); null: the local "
        "directory as file://.",
    )


Integration = MlflowIntegration  # a union discriminated by `type` once there is a second tracker


class RunSettings(_Strict):
    """Where and how one run executes; the CLI and the worker fill these in, and they never change its result."""

    output_dir: str = Field("var/runs/latest", description="Where state, checkpoints and metrics go.")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast precision; 'auto' is bf16 on a CUDA device that supports it, else fp32.",
    )
    cache: Literal["auto", "off", "refresh"] = Field(
        "auto",
        description="Teacher cache: 'auto' reuses or fills it, 'off' runs the teacher live, 'refresh' rebuilds it.",
    )
    cache_dir: str = Field("var/teacher_cache", description="Where teacher caches live.")
    num_threads: int | None = Field(None, ge=1, le=512, description="torch CPU threads; null keeps torch's.")
    reuse_freed_memory: bool = Field(
        True, description="Keep freed memory in the process for the next step (Linux, glibc).",
    )
    devices: int = Field(1, ge=1, le=256, description="Data-parallel processes (GPUs, or CPU processes).")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")


RUN_KEYS: frozenset[str] = frozenset(RunSettings.model_fields)


class DistillConfig(_Strict):
    """A whole run: method, teacher, student, data, hyperparameters, and the settings it runs with (`run`)."""

    method: Method = Field("gradient_kd", description="Training objective (docs/methods.md).")
    teacher: str = Field(..., description="Local Hugging Face directory of the fine-tuned teacher.")
    student: StudentSpec = Field(default_factory=StudentSpec)
    data: DataSpec
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    run: RunSettings = Field(default_factory=RunSettings)
    export: list[ExportFormat] = Field(
        default_factory=list, max_length=2,
        description="Deployable copies of the best student made after training: 'onnx' (fp32) and 'onnx-int8'.",
    )
    integrations: list[Integration] = Field(
        default_factory=list, max_length=4,
        description="Experiment trackers the run logs to, e.g. [{\"type\": \"mlflow\", \"experiment\": \"sst2\"}].",
    )

    @field_validator("export")
    @classmethod
    def _export_once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each export format may be listed once")
        return value

    @model_validator(mode="before")
    @classmethod
    def _run_keys_at_the_top(cls, raw: Any) -> Any:
        """Run settings may also stand at the top level (configs written before `run` existed, `--set KEY=VALUE`);
        there they override the same key under `run`."""
        if not isinstance(raw, dict) or not RUN_KEYS & raw.keys():
            return raw
        run = raw.get("run")
        merged = dict(run) if isinstance(run, dict) else {}
        if isinstance(run, RunSettings):
            merged = run.model_dump(exclude_unset=True)
        elif run is not None and not isinstance(run, dict):
            return raw  # not a mapping: the field's own validation names it
        merged.update({key: raw[key] for key in RUN_KEYS & raw.keys()})
        return {**{k: v for k, v in raw.items() if k not in RUN_KEYS}, "run": merged}

    @model_validator(mode="after")
    def _check_method_settings(self) -> DistillConfig:
        method = method_properties(self.method)
        if method.needs_teacher_width and self.student.hidden_size is not None:
            raise ValueError(
                f"student.hidden_size: {self.method} compares hidden states and needs the teacher's width: leave "
                "student.hidden_size null" + (" or use gradient_kd" if method.input_gradients else "")
            )
        if self.hyperparameters.saliency_form == "vector" and self.student.hidden_size is not None:
            raise ValueError(
                "hyperparameters.saliency_form: 'vector' needs equal widths; use 'scalar' or 'auto'"
            )
        return self

    @classmethod
    def load(cls, path: str | Path) -> DistillConfig:
        """Read a YAML or JSON file; raise `ConfigError` naming the first bad field."""
        return cls.parse(read_mapping(path))

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> DistillConfig:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise config_error_from(exc) from exc


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The settings mapping of a YAML or JSON config file; `ConfigError` when it cannot be read or is no mapping."""
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
    return raw


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
