"""The encoder families we can cut students from, and what differs between them (docs/teachers.md).

Every family-specific fact lives in one `Family` entry of `FAMILIES`, keyed by the config's
`model_type`: where the encoder layers sit in the state dict, the config field names of depth, width,
heads, positions and every dropout, the per-layer config lists that must be cut with the layers, the
module whose output is the input embedding E of the gradient loss, and whether token type ids are taken.
Field names were read off transformers 5.x (`models/<family>/configuration_*.py`, `modeling_*.py`).
Everything else (decoders, encoder-decoders, unknown types) is refused by `family_of`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from gkd.models.shapes import student_heads

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# State-dict key of one encoder layer: prefix, 0-based layer index, rest of the name.
_BERT_LAYER = re.compile(r"^(?P<prefix>[a-z_]+\.encoder\.layer\.)(?P<index>\d+)(?P<rest>\..*)$")
_BERT_DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")


@dataclass(frozen=True)
class Family:
    """How one transformers encoder family is laid out (names as in its config and state dict)."""

    model_type: str
    layer_key: re.Pattern[str]
    layer_path: str  # module path of the layer list below the base model, for docs and tests
    depth: str = "num_hidden_layers"
    width: str = "hidden_size"
    heads: str = "num_attention_heads"
    ffn: str = "intermediate_size"
    max_positions: str = "max_position_embeddings"
    dropouts: tuple[str, ...] = _BERT_DROPOUTS
    embedding_width: str | None = None  # config field of E's width when it is not `width` (ALBERT, ELECTRA)
    token_types: bool = True  # the forward takes token_type_ids (used only when type_vocab_size > 1)
    position_pad: str | int | None = None  # positions start after a pad id: a config field (RoBERTa) or fixed (MPNet)
    per_layer_lists: tuple[str, ...] = ()  # config lists with one entry per layer (ModernBERT's layer_types)
    head_prefixes: tuple[str, ...] = ("classifier.", "pooler.")  # state-dict prefixes of pooler/classifier
    shared_layers: bool = False  # ALBERT: one layer group applied `depth` times
    notes: str = ""

    # ---------------------------------------------------------------- config facts
    def num_layers(self, config: Any) -> int:
        return int(getattr(config, self.depth))

    def hidden_size(self, config: Any) -> int:
        return int(getattr(config, self.width))

    def num_heads(self, config: Any) -> int:
        return int(getattr(config, self.heads))

    def embedding_size(self, config: Any) -> int:
        """Width of E, the embedding output the gradient loss differentiates against."""
        return int(getattr(config, self.embedding_width or self.width))

    def usable_positions(self, config: Any) -> int:
        """Longest input the position table allows (RoBERTa-style tables reserve pad id + 1 rows)."""
        table = int(getattr(config, self.max_positions))
        if self.position_pad is None:
            return table
        pad = self.position_pad if isinstance(self.position_pad, int) else getattr(config, self.position_pad)
        return table - int(pad or 0) - 1

    def takes_token_types(self, config: Any) -> bool:
        """Pass token_type_ids only where they change anything (a type table of more than one row)."""
        return self.token_types and int(getattr(config, "type_vocab_size", 0) or 0) > 1

    # ---------------------------------------------------------------- cutting a student
    def cut_config(self, config: Any, layers: list[int] | None, num_layers: int, dropout: float) -> None:
        """Set depth, the per-layer lists (in step with the teacher `layers`) and every dropout, in place."""
        chosen = layers if layers is not None else list(range(num_layers))
        for name in self.per_layer_lists:
            values = getattr(config, name, None)
            if values is not None:
                setattr(config, name, [values[i] for i in chosen])
        if self.shared_layers and int(getattr(config, "num_hidden_groups", 1)) > 1:
            config.num_hidden_groups = num_layers  # one group per student layer, each a copy of its teacher's
        setattr(config, self.depth, num_layers)
        for name in self.dropouts:
            setattr(config, name, dropout)

    def resize(self, config: Any, hidden: int, teacher_heads: int) -> None:
        """A student of another width: the largest head count <= the teacher's that divides it."""
        setattr(config, self.width, hidden)
        setattr(config, self.heads, student_heads(hidden, teacher_heads))
        setattr(config, self.ffn, 4 * hidden)

    def teacher_key(self, key: str, layers: list[int] | None, teacher_config: Any) -> str | None:
        """The teacher state-dict key that initialises student `key`; None leaves it fresh."""
        if self.shared_layers:
            return self._albert_key(key, layers, teacher_config)
        match = self.layer_key.match(key)
        if match is None:
            return key
        if layers is None:
            return None
        return f"{match['prefix']}{layers[int(match['index'])]}{match['rest']}"

    def _albert_key(self, key: str, layers: list[int] | None, teacher_config: Any) -> str | None:
        match = self.layer_key.match(key)
        if match is None:
            return key
        if layers is None:
            return None
        groups = int(getattr(teacher_config, "num_hidden_groups", 1))
        if groups == 1:
            return key  # the one shared group: every teacher layer is these weights
        per_group = self.num_layers(teacher_config) / groups
        teacher_group = int(layers[int(match["index"])] / per_group)  # as AlbertTransformer picks it
        return f"{match['prefix']}{teacher_group}{match['rest']}"

    def is_head(self, key: str) -> bool:
        return key.startswith(self.head_prefixes) or ".pooler." in key

    def embedding_module(self, model: torch.nn.Module) -> torch.nn.Module | None:
        base = getattr(model, str(getattr(model, "base_model_prefix", "")), model)
        module = getattr(base, "embeddings", None)
        return module if isinstance(module, torch.nn.Module) else None


_ROBERTA_NOTES = "positions start at pad_token_id + 1, so max_position_embeddings - pad - 1 tokens fit"

FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("bert", _BERT_LAYER, "bert.encoder.layer"),
        Family(
            "roberta", _BERT_LAYER, "roberta.encoder.layer", position_pad="pad_token_id", notes=_ROBERTA_NOTES
        ),
        Family(
            "xlm-roberta", _BERT_LAYER, "roberta.encoder.layer", position_pad="pad_token_id", notes=_ROBERTA_NOTES
        ),
        Family(
            "electra", _BERT_LAYER, "electra.encoder.layer", embedding_width="embedding_size",
            notes="E is embedding_size wide; embeddings_project maps it to hidden_size before the layers",
        ),
        Family(
            "deberta-v2", _BERT_LAYER, "deberta.encoder.layer",
            dropouts=("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout", "cls_dropout"),
            notes="disentangled relative attention (encoder.rel_embeddings is shared and copied whole); "
            "DeBERTa-v3 checkpoints are deberta-v2; token types only when type_vocab_size > 1",
        ),
        Family(
            "mpnet", _BERT_LAYER, "mpnet.encoder.layer",
            dropouts=("hidden_dropout_prob", "attention_probs_dropout_prob"), token_types=False,
            position_pad=1,
            notes="relative attention bias (encoder.relative_attention_bias) is shared and copied whole; "
            "padding id 1 is fixed in the embeddings",
        ),
        Family(
            "distilbert",
            re.compile(r"^(?P<prefix>distilbert\.transformer\.layer\.)(?P<index>\d+)(?P<rest>\..*)$"),
            "distilbert.transformer.layer",
            depth="n_layers", width="dim", heads="n_heads", ffn="hidden_dim",
            dropouts=("dropout", "attention_dropout", "seq_classif_dropout", "qa_dropout"),
            token_types=False, head_prefixes=("pre_classifier.", "classifier."),
            notes="no token types; pre_classifier + classifier form the head",
        ),
        Family(
            "albert",
            re.compile(
                r"^(?P<prefix>albert\.encoder\.albert_layer_groups\.)(?P<index>\d+)(?P<rest>\.albert_layers\..*)$"
            ),
            "albert.encoder.albert_layer_groups",
            dropouts=("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"),
            embedding_width="embedding_size", shared_layers=True,
            notes="one shared layer group applied num_hidden_layers times: a student is fewer repetitions of "
            "the same weights, so bottom/every_other/lists all copy that group",
        ),
        Family(
            "modernbert",
            re.compile(r"^(?P<prefix>model\.layers\.)(?P<index>\d+)(?P<rest>\..*)$"),
            "model.layers",
            dropouts=("attention_dropout", "embedding_dropout", "mlp_dropout", "classifier_dropout"),
            token_types=False, per_layer_lists=("layer_types",), head_prefixes=("head.", "classifier."),
            notes="layer_types (full/sliding attention) is cut with the layers; rotary positions; layer 0 has "
            "no attn_norm (a teacher layer > 0 copied there loses it, teacher layer 0 copied higher gets a "
            "fresh one)",
        ),
    )
}


def supported() -> str:
    """The supported model types, for error messages."""
    return ", ".join(sorted(FAMILIES))


class ModelError(ValueError):
    """A model directory we refuse or cannot use; `param` names the offending part."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param



def family_of(model_type: object) -> Family:
    """The family entry of `model_type`; anything else (decoders, encoder-decoders, unknown) is refused."""
    family = FAMILIES.get(str(model_type)) if model_type else None
    if family is None:
        raise ModelError(
            f"model_type {model_type!r} is not supported: students are cut from encoder classifiers of the "
            f"families {supported()} (docs/teachers.md)",
            "config.model_type",
        )
    return family


def model_family(model: PreTrainedModel) -> Family:
    return family_of(model.config.model_type)



def embedding_module(model: PreTrainedModel) -> torch.nn.Module:
    """The module whose output is E (word + position + type embeddings after LayerNorm): the gradient loss
    differentiates against its output tensor (`gkd.method.objective`)."""
    embeddings = model_family(model).embedding_module(model)
    if embeddings is None:
        raise ModelError(f"{type(model).__name__} has no embeddings module", "teacher")
    return embeddings
