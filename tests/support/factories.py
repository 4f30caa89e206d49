"""Tiny real models and data built inside the tests: no downloads, a few hundred KB, seconds to train.

The vocabulary is small but the model is an ordinary `BertForSequenceClassification` saved as a Hugging
Face directory (config.json, model.safetensors, tokenizer files), exactly what users upload.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

POSITIVE = "good great fine lovely superb wonderful brilliant charming moving delightful".split()  # noqa: SIM905
NEGATIVE = "bad awful dull boring poor terrible weak clumsy tedious messy".split()  # noqa: SIM905
NEUTRAL = (
    "the a movie film plot story actor acting script scene music ending it was is and but very "  # noqa: SIM905
    "quite rather really with of to in this that its so too much some".split()
)
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + sorted(set(POSITIVE + NEGATIVE + NEUTRAL))
LABELS = ("negative", "positive")


def write_tokenizer(directory: Path) -> BertTokenizerFast:
    """A word-level BERT tokenizer over `VOCAB`, saved into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def tiny_bert_config(num_layers: int = 2, hidden: int = 32, labels: tuple[str, ...] = LABELS) -> BertConfig:
    return BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def make_tiny_teacher(
    directory: Path,
    *,
    num_layers: int = 2,
    hidden: int = 32,
    labels: tuple[str, ...] = LABELS,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised classifier + tokenizer to `directory` (safetensors) and return it."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(num_layers, hidden, labels))
    model.save_pretrained(str(directory), safe_serialization=True)
    write_tokenizer(directory)
    return directory


def make_tiny_base_encoder(directory: Path, *, num_layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """Save a random bare `BertModel` (an encoder without a classification head, what a user fine-tunes into a
    teacher) + tokenizer to `directory` (safetensors) and return it."""
    from transformers import BertModel

    torch.manual_seed(seed)
    BertModel(tiny_bert_config(num_layers, hidden)).save_pretrained(str(directory), safe_serialization=True)
    write_tokenizer(directory)
    return directory


def sentiment_rows(n: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """Short labelled sentences whose label is decided by one sentiment word, so tiny models can learn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 2]
        cue = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        words = rng.sample(NEUTRAL, rng.randint(3, 8))
        words.insert(rng.randint(0, len(words)), cue)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- one tiny classifier per encoder family
FAMILY_TYPES = (
    "bert", "distilbert", "roberta", "xlm-roberta", "electra", "deberta-v2", "albert", "modernbert", "mpnet",
)


def tiny_family_config(
    model_type: str, *, num_layers: int = 4, hidden: int = 32, heads: int = 4, dropout: float = 0.1,
    vocab_size: int = len(VOCAB), labels: tuple[str, ...] = LABELS,
) -> Any:
    """A small random config of `model_type`, with non-zero dropouts under the family's own names, built
    from the transformers config classes (field names read off transformers 5.x)."""
    import transformers as tf

    common: dict[str, Any] = {
        "vocab_size": vocab_size, "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)}, "pad_token_id": 0,
    }
    bert_like = {"hidden_size": hidden, "num_hidden_layers": num_layers, "num_attention_heads": heads,
                 "intermediate_size": 2 * hidden, "max_position_embeddings": 64,
                 "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    if model_type == "bert":
        return tf.BertConfig(**bert_like, **common)
    if model_type == "roberta":
        return tf.RobertaConfig(**bert_like, type_vocab_size=1, **common)
    if model_type == "xlm-roberta":
        return tf.XLMRobertaConfig(**bert_like, type_vocab_size=1, **common)
    if model_type == "electra":  # E narrower than the layers, as in ELECTRA-small
        return tf.ElectraConfig(**bert_like, embedding_size=hidden // 2, classifier_dropout=dropout, **common)
    if model_type == "deberta-v2":  # DeBERTa-v3 style: disentangled relative attention, no absolute positions
        return tf.DebertaV2Config(**bert_like, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                  position_buckets=8, position_biased_input=False, pooler_dropout=dropout,
                                  **common)
    if model_type == "mpnet":
        return tf.MPNetConfig(**bert_like, **common)
    if model_type == "albert":
        return tf.AlbertConfig(**bert_like, embedding_size=hidden // 2, classifier_dropout_prob=dropout, **common)
    if model_type == "distilbert":
        return tf.DistilBertConfig(dim=hidden, n_layers=num_layers, n_heads=heads, hidden_dim=2 * hidden,
                                   max_position_embeddings=64, dropout=dropout, attention_dropout=dropout,
                                   seq_classif_dropout=dropout, **common)
    if model_type == "modernbert":  # alternate global and local (window 4) attention layers
        return tf.ModernBertConfig(
            hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
            intermediate_size=2 * hidden, max_position_embeddings=64, local_attention=4,
            global_attn_every_n_layers=2, attention_dropout=dropout, embedding_dropout=dropout,
            mlp_dropout=dropout, classifier_dropout=dropout, bos_token_id=2, cls_token_id=2, eos_token_id=3,
            sep_token_id=3, **common,
        )
    raise ValueError(f"no tiny config for {model_type!r}")


def make_tiny_family_teacher(directory: Path, model_type: str, *, seed: int = 0, **config: Any) -> Path:
    """Save a random `model_type` classifier + the word-level tokenizer (safetensors), as users upload."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_family_config(model_type, **config))
    model.save_pretrained(str(directory), safe_serialization=True)
    write_tokenizer(directory)
    return directory


def make_tiny_gpt2(directory: Path) -> Path:
    """A decoder-only classifier: a family we refuse."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(VOCAB), n_positions=32, n_embd=16, n_layer=1, n_head=2, pad_token_id=0,
                        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    GPT2ForSequenceClassification(config).save_pretrained(str(directory), safe_serialization=True)
    write_tokenizer(directory)
    return directory


def csv_bytes(rows: list[dict[str, str]]) -> bytes:
    """`rows` as the bytes of a CSV file with a header (what an upload sends)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()
