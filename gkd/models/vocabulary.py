"""Vocabulary pruning (`student.vocabulary: training_data`): a student that keeps only the tokens its training data
uses, with a tokenizer rewritten to match (docs/methods.md, "Vocabulary pruning").

The embedding table is most of a shallow student (a 3-layer MiniLM: 11.7 M of its 17.4 M parameters), and a task's
texts use a fraction of a 30k-token vocabulary. Pruning is done on the trained student, at export: training keeps
the teacher's token ids, which the trainer feeds to teacher and student alike.

Which tokens are kept: every token of the tokenized texts (special tokens included), every added or special token,
and what each tokenizer model needs to tokenize those texts exactly as before:

- WordPiece (BERT, DistilBERT, ELECTRA, MPNet): greedy longest match first over a subset of the vocabulary finds the
  same pieces, as long as it keeps those pieces; a word that came out as the unknown token keeps the pieces of the
  greedy path that failed, so it fails again at the same place.
- BPE (RoBERTa, ModernBERT; byte-level): every token a kept token is merged from (transitively), the merges among
  kept tokens in their order, and the 256-symbol byte alphabet, so unseen text still tokenizes (down to bytes).
- Unigram (DeBERTa-v2/v3, ALBERT, XLM-R; SentencePiece): the best segmentation among fewer pieces is still the one
  that used only kept pieces; byte-fallback pieces are kept.
- WordLevel: the tokens themselves.

New ids follow the old order (kept ids ascending), so special tokens at the start keep their ids; the families whose
position ids count from the padding id (RoBERTa, MPNet) keep every id up to it. `check_same_tokens` proves the
rewrite on the texts: each pruned tokenization is the full one with ids mapped.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import AutoTokenizer, PreTrainedModel

from gkd.config import ConfigError
from gkd.models.families import model_family

TOKENIZER_MODELS = ("WordPiece", "BPE", "Unigram", "WordLevel")
_BATCH = 1024  # texts tokenized per call


@dataclass(frozen=True)
class PrunedVocabulary:
    """The kept token ids of a full vocabulary (ascending: the new id of `kept_ids[i]` is i) and the rewritten
    tokenizer that yields them."""

    tokenizer: Any
    kept_ids: tuple[int, ...]
    full_size: int

    @cached_property
    def id_map(self) -> dict[int, int]:
        """Full-vocabulary id -> pruned id, for the kept tokens."""
        return {old: new for new, old in enumerate(self.kept_ids)}

    def remap(self, ids: Sequence[int]) -> list[int]:
        """Full-vocabulary ids of kept tokens as pruned ids; KeyError for a token that was not kept."""
        return [self.id_map[i] for i in ids]

    def summary(self) -> dict[str, int]:
        return {"kept_tokens": len(self.kept_ids), "full_tokens": self.full_size}


class VocabularyError(ConfigError):
    """A tokenizer we cannot prune, or a pruning that would change how the training texts tokenize."""


# ---------------------------------------------------------------- which tokens
def _backend_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise VocabularyError(
            f"{type(tokenizer).__name__} has no tokenizer.json (a Hugging Face 'fast' tokenizer): its vocabulary "
            "cannot be pruned; use student.vocabulary 'full'", "student.vocabulary")
    data: dict[str, Any] = json.loads(backend.to_str())
    kind = data["model"]["type"]
    if kind not in TOKENIZER_MODELS:
        raise VocabularyError(f"a {kind} tokenizer cannot be pruned (supported: {', '.join(TOKENIZER_MODELS)}); "
                              "use student.vocabulary 'full'", "student.vocabulary")
    return data


def check_prunable(tokenizer: Any) -> None:
    """Raise `VocabularyError` for a tokenizer `prune_vocabulary` cannot rewrite (before a run trains for nothing)."""
    _backend_json(tokenizer)


def _encode_all(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str | None] | None) -> Iterable[list[int]]:
    """Token ids of every text (and pair), special tokens included, without truncation."""
    for start in range(0, len(texts), _BATCH):
        chunk = list(texts[start : start + _BATCH])
        if pairs is not None and any(p is not None for p in pairs[start : start + _BATCH]):
            seconds = [p or "" for p in pairs[start : start + _BATCH]]
            yield from tokenizer(chunk, seconds, truncation=False, add_special_tokens=True)["input_ids"]
        else:
            yield from tokenizer(chunk, truncation=False, add_special_tokens=True)["input_ids"]


def _wordpiece_path(word: str, vocab: dict[str, int], prefix: str, max_chars: int) -> list[str]:
    """The pieces greedy longest-match-first takes through `word` before it gives up (all of them if it does not)."""
    if len(word) > max_chars:
        return []
    pieces: list[str] = []
    start = 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                break
            end -= 1
        if end == start:
            return pieces
        start = end
    return pieces


def _unknown_word_pieces(tokenizer: Any, model: dict[str, Any], texts: Iterable[str]) -> set[str]:
    """WordPiece: the pieces of the failed greedy paths of words that came out as the unknown token."""
    backend = tokenizer.backend_tokenizer
    vocab, prefix = model["vocab"], model.get("continuing_subword_prefix") or ""
    max_chars = int(model.get("max_input_chars_per_word") or 100)
    unk_id = vocab.get(model.get("unk_token"))
    pieces: set[str] = set()
    for text in texts:
        if unk_id is None or unk_id not in backend.encode(text, add_special_tokens=False).ids:
            continue
        normalized = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
        words = backend.pre_tokenizer.pre_tokenize_str(normalized) if backend.pre_tokenizer is not None else [
            (normalized, None)]
        for word, _ in words:
            pieces.update(_wordpiece_path(word, vocab, prefix, max_chars))
    return pieces


def _byte_alphabet() -> list[str]:
    """The 256 symbols byte-level BPE writes bytes as (GPT-2's printable mapping)."""
    return list(ByteLevel.alphabet())


def _mentions(node: Any, kind: str) -> bool:
    """Whether a tokenizer.json component (or a Sequence of them) is of `kind`."""
    if isinstance(node, dict):
        return node.get("type") == kind or any(_mentions(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, kind) for v in node)
    return False


def _merge_pair(merge: Any) -> tuple[str, str]:
    if isinstance(merge, str):
        left, right = merge.split(" ", 1)
        return left, right
    return str(merge[0]), str(merge[1])


def _bpe_closure(model: dict[str, Any], kept: set[str]) -> set[str]:
    """`kept` and every token a kept token is merged from, transitively (any merge that makes it)."""
    prefix = model.get("continuing_subword_prefix") or ""
    makers: dict[str, list[tuple[str, str]]] = {}
    for merge in model["merges"]:
        left, right = _merge_pair(merge)
        joined = left + (right[len(prefix):] if prefix and right.startswith(prefix) else right)
        makers.setdefault(joined, []).append((left, right))
    closed, pending = set(kept), list(kept)
    while pending:
        for pair in makers.get(pending.pop(), ()):
            for part in pair:
                if part not in closed:
                    closed.add(part)
                    pending.append(part)
    return closed


# ---------------------------------------------------------------- rewriting the tokenizer
def _remap_ids(node: Any, id_map: dict[int, int]) -> Any:
    """Post-processor ids (TemplateProcessing's `ids`, Bert/RobertaProcessing's [token, id]) in the new numbering."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                out[key] = [id_map[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                out[key] = [value[0], id_map[value[1]]]
            else:
                out[key] = _remap_ids(value, id_map)
        return out
    if isinstance(node, list):
        return [_remap_ids(v, id_map) for v in node]
    return node


def _rewrite_model(model: dict[str, Any], kept_ids: Sequence[int], id_map: dict[int, int]) -> dict[str, Any]:
    kind = model["type"]
    model = dict(model)
    if kind == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in kept_ids]
        if model.get("unk_id") is not None:
            model["unk_id"] = id_map[int(model["unk_id"])]
        return model
    by_id = {i: token for token, i in model["vocab"].items()}
    model["vocab"] = {by_id[i]: new for new, i in enumerate(kept_ids)}
    if kind == "BPE":
        prefix = model.get("continuing_subword_prefix") or ""
        kept_merges = []
        for merge in model["merges"]:
            left, right = _merge_pair(merge)
            joined = left + (right[len(prefix):] if prefix and right.startswith(prefix) else right)
            if left in model["vocab"] and right in model["vocab"] and joined in model["vocab"]:
                kept_merges.append(merge)
        model["merges"] = kept_merges
    return model


def _token_ids(model: dict[str, Any]) -> dict[str, int]:
    if model["type"] == "Unigram":
        return {piece: i for i, (piece, _score) in enumerate(model["vocab"])}
    return dict(model["vocab"])


def _kept_ids(tokenizer: Any, data: dict[str, Any], used: set[int], texts: Sequence[str],
              pairs: Sequence[str | None] | None, keep_through: int | None) -> list[int]:
    """The full-vocabulary ids to keep: `used`, added tokens, and what the tokenizer model needs (module docstring)."""
    model = data["model"]
    ids = _token_ids(model)
    kept = set(used) | {int(token["id"]) for token in data.get("added_tokens") or []}
    kept |= {int(i) for i in tokenizer.all_special_ids}
    if keep_through is not None:
        kept |= set(range(keep_through + 1))
    kind = model["type"]
    if kind == "WordPiece":
        if model.get("unk_token") in ids:
            kept.add(ids[model["unk_token"]])
        words = [*texts, *(p for p in pairs or () if p)]
        kept |= {ids[piece] for piece in _unknown_word_pieces(tokenizer, model, words)}
    elif kind == "BPE":
        names = {i: token for token, i in ids.items()}
        tokens = {names[i] for i in kept if i in names}
        if _mentions(data.get("pre_tokenizer"), "ByteLevel") or _mentions(data.get("decoder"), "ByteLevel"):
            tokens |= {symbol for symbol in _byte_alphabet() if symbol in ids}
        if model.get("byte_fallback"):
            tokens |= {f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" in ids}
        if model.get("unk_token") in ids:
            tokens.add(model["unk_token"])
        kept |= {ids[token] for token in _bpe_closure(model, tokens) if token in ids}
    elif kind == "Unigram":
        if model.get("unk_id") is not None:
            kept.add(int(model["unk_id"]))
        if model.get("byte_fallback"):
            kept |= {ids[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in ids}
    elif kind == "WordLevel" and model.get("unk_token") in ids:
        kept.add(ids[model["unk_token"]])
    return sorted(i for i in kept if 0 <= i < len(tokenizer))


def _load_rewritten(tokenizer: Any, data: dict[str, Any]) -> Any:
    """The tokenizer's own class, loaded from its saved files with tokenizer.json replaced by `data`."""
    with tempfile.TemporaryDirectory(prefix="gkd-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        for stale in ("vocab.txt", "vocab.json", "merges.txt", "spm.model", "sentencepiece.bpe.model",
                      "spiece.model", "added_tokens.json"):
            (Path(tmp) / stale).unlink(missing_ok=True)  # slow-tokenizer files of the full vocabulary
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)


def prune_vocabulary(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str | None] | None = None, *,
                     keep_through: int | None = None) -> PrunedVocabulary:
    """The tokens `texts` (and their `pairs`) use, and a tokenizer of only those that tokenizes them as before.

    `keep_through` keeps every id up to it as well (a model whose position ids count from the padding id).
    Raises `VocabularyError` when the tokenizer cannot be pruned or the rewrite would tokenize a text differently."""
    data = _backend_json(tokenizer)
    used = {i for ids in _encode_all(tokenizer, texts, pairs) for i in ids}
    kept_ids = _kept_ids(tokenizer, data, used, texts, pairs, keep_through)
    id_map = {old: new for new, old in enumerate(kept_ids)}
    rewritten = dict(data)
    rewritten["model"] = _rewrite_model(data["model"], kept_ids, id_map)
    rewritten["added_tokens"] = [{**token, "id": id_map[int(token["id"])]} for token in data.get("added_tokens") or []]
    rewritten["post_processor"] = _remap_ids(data.get("post_processor"), id_map)
    rewritten["padding"] = None  # transformers pads itself; a stored pad id would be the full vocabulary's
    rewritten["truncation"] = None
    vocabulary = PrunedVocabulary(_load_rewritten(tokenizer, rewritten), tuple(kept_ids), len(tokenizer))
    check_same_tokens(tokenizer, vocabulary, texts, pairs)
    return vocabulary


def check_same_tokens(tokenizer: Any, vocabulary: PrunedVocabulary, texts: Sequence[str],
                      pairs: Sequence[str | None] | None = None) -> None:
    """Raise `VocabularyError` unless the pruned tokenizer gives every text the full one's tokens (ids mapped)."""
    full = _encode_all(tokenizer, texts, pairs)
    pruned = _encode_all(vocabulary.tokenizer, texts, pairs)
    for row, (before, after) in enumerate(zip(full, pruned, strict=True)):
        try:
            same = vocabulary.remap(before) == after
        except KeyError:
            same = False
        if not same:
            raise VocabularyError(f"the pruned tokenizer splits training text {row} differently: "
                                  f"{tokenizer.convert_ids_to_tokens(before)[:20]} became "
                                  f"{vocabulary.tokenizer.convert_ids_to_tokens(after)[:20]}", "student.vocabulary")


# ---------------------------------------------------------------- the model
def position_pad_id(model: PreTrainedModel) -> int | None:
    """The id below which pruning must keep every id: the padding id of families whose positions count from it."""
    family = model_family(model)
    if family.position_pad is None:
        return None
    pad = family.position_pad if isinstance(family.position_pad, int) else getattr(model.config, family.position_pad)
    return None if pad is None else int(pad)


_TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id", "unk_token_id",
                    "mask_token_id", "decoder_start_token_id")


def pruned_model(model: PreTrainedModel, vocabulary: PrunedVocabulary) -> PreTrainedModel:
    """A copy of `model` whose input embedding (and any output embedding) holds only the kept rows, in the new
    order, with the config's vocabulary size and token ids renumbered; `model` is left as it was."""
    pruned = copy.deepcopy(model)
    rows = torch.tensor(vocabulary.kept_ids, dtype=torch.long)
    embedding = pruned.get_input_embeddings()
    assert isinstance(embedding, torch.nn.Embedding)
    if embedding.num_embeddings <= max(vocabulary.kept_ids):
        raise VocabularyError(f"the model has {embedding.num_embeddings} token embeddings and the tokenizer "
                              f"{vocabulary.full_size} tokens: cannot prune", "student.vocabulary")
    output = pruned.get_output_embeddings()
    tied = output is not None and output.weight is embedding.weight
    embedding.weight = torch.nn.Parameter(embedding.weight.detach()[rows].clone(),
                                          requires_grad=embedding.weight.requires_grad)
    embedding.num_embeddings = len(rows)
    if embedding.padding_idx is not None:
        embedding.padding_idx = vocabulary.id_map.get(int(embedding.padding_idx))
    if output is not None:
        output.weight = embedding.weight if tied else torch.nn.Parameter(output.weight.detach()[rows].clone())
        if getattr(output, "bias", None) is not None:
            output.bias = torch.nn.Parameter(output.bias.detach()[rows].clone())
        output.out_features = len(rows)
    pruned.config.vocab_size = len(rows)
    for name in _TOKEN_ID_FIELDS:
        value = getattr(pruned.config, name, None)
        if isinstance(value, int) and value in vocabulary.id_map:
            setattr(pruned.config, name, vocabulary.id_map[value])
    pad = position_pad_id(model)
    if pad is not None and vocabulary.id_map.get(pad) != pad:
        raise VocabularyError(f"the padding id {pad} would move: positions of {model.config.model_type} count from "
                              "it", "student.vocabulary")
    return pruned


def teacher_id_lookup(student_tokenizer: Any, teacher_tokenizer: Any) -> torch.Tensor | None:
    """Student token id -> the teacher's id of the same token (index a batch's input_ids with it), for a student
    with a pruned vocabulary; None when both read the same ids. Used where one text is fed to both models (saliency,
    `gkd evaluate --teacher`), so both read it as the student splits it."""
    ours, theirs = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if ours == theirs:
        return None
    missing = sorted(set(ours) - set(theirs))
    if missing:
        raise VocabularyError(f"the student's tokens {missing[:5]} are not the teacher's: the two cannot read the "
                              "same text token by token", "teacher")
    lookup = torch.zeros(max(ours.values()) + 1, dtype=torch.long)
    for token, i in ours.items():
        lookup[i] = theirs[token]
    return lookup
