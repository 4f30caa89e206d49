"""gkd.deploy: ONNX export round trip on a tiny random BERT (fp32 logits match PyTorch; int8 loads and predicts the
label names), refusal of directories that cannot be exported, nothing half-written, and `gkd evaluate` side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gkd.cli import main
from gkd.data.batching import encode
from gkd.data.readers import read_examples
from gkd.deploy.feeds import batches_of
from tests.support.factories import LABELS, make_tiny_teacher, sentiment_rows, write_csv

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from gkd.deploy.measure import compare, predict  # noqa: E402
from gkd.deploy.onnx_export import ExportError, export_onnx  # noqa: E402
from gkd.deploy.predictors import OnnxPredictor, TorchPredictor, load_predictor  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("student") / "student", seed=3)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "test.csv", sentiment_rows(40, seed=5))


@pytest.fixture(scope="module")
def fp32_dir(model_dir: Path, data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    export_onnx(model_dir, out, data_file=data_file, max_length=32)
    return out


@pytest.fixture(scope="module")
def int8_dir(model_dir: Path, data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "int8"
    export_onnx(model_dir, out, quantize="int8", data_file=data_file, max_length=32)
    return out


def test_fp32_logits_match_pytorch_on_other_batch_sizes_and_lengths(model_dir: Path, fp32_dir: Path) -> None:
    names = sorted(p.name for p in fp32_dir.iterdir())
    assert {"model.onnx", "config.json", "gkd_card.json", "tokenizer.json"} <= set(names), names
    card = json.loads((fp32_dir / "gkd_card.json").read_text())
    assert card["precision"] == "fp32" and card["labels"] == list(LABELS)
    assert card["source"]["directory"] == model_dir.name  # a name: a server's card showed its storage path
    assert card["verification"]["passed"] is True and card["verification"]["examples"] == 40
    assert card["verification"]["max_abs_logit_diff"] <= 1e-4

    torch_model, onnx_model = TorchPredictor(model_dir), OnnxPredictor(fp32_dir)
    # Shapes the export never saw: batch 1 and 7, from 3 to 30 tokens (dynamic axes).
    texts = ["good", "the film was very dull and the plot was poor", *(["a lovely film " * 7] * 5)]
    dataset = encode(onnx_model.tokenizer, texts, None, [0] * len(texts), 32)
    for size in (1, 7):
        for batch in batches_of(dataset, size, 0):
            np.testing.assert_allclose(onnx_model.logits(batch), torch_model.logits(batch), atol=1e-4, rtol=0)


def test_int8_loads_and_predicts_the_label_names(fp32_dir: Path, int8_dir: Path, data_file: Path) -> None:
    card = json.loads((int8_dir / "gkd_card.json").read_text())
    assert card["precision"] == "int8" and "label_agreement" in card["verification"]
    assert "passed" not in card["verification"]  # int8 is reported, not held to the fp32 tolerance
    assert not (int8_dir / "model.fp32.onnx").exists()
    predictor = load_predictor(int8_dir)
    assert predictor.runtime == "onnx-int8" and predictor.labels == list(LABELS)
    texts = ["good film", "awful plot"]
    logits = predictor.logits(next(batches_of(encode(predictor.tokenizer, texts, None, [0, 0], 16), 2, 0)))
    assert logits.shape == (2, len(LABELS)) and np.isfinite(logits).all()
    # int8 weights: the matrix products are integer ones now, and the file is smaller.
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8_dir / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops
    assert (int8_dir / "model.onnx").stat().st_size < (fp32_dir / "model.onnx").stat().st_size


def _not_exportable(tmp_path: Path, model_dir: Path, fp32_dir: Path) -> dict[str, Path]:
    import shutil

    no_weights = tmp_path / "no-weights"
    shutil.copytree(model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    pickled = tmp_path / "pickled"
    shutil.copytree(model_dir, pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    no_head = tmp_path / "no-head"
    shutil.copytree(model_dir, no_head)
    config = json.loads((no_head / "config.json").read_text())
    for key in ("id2label", "label2id", "num_labels"):
        config.pop(key, None)
    (no_head / "config.json").write_text(json.dumps(config))
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"has no model.safetensors": no_weights, "pickle": pickled, "no classification head": no_head,
            "no config.json": empty, "already an ONNX directory": fp32_dir}


def test_directories_that_cannot_be_exported_are_refused_and_nothing_is_written(
        tmp_path: Path, model_dir: Path, fp32_dir: Path) -> None:
    for reason, source in _not_exportable(tmp_path, model_dir, fp32_dir).items():
        out = tmp_path / "out" / source.name
        with pytest.raises(ExportError, match=reason):
            export_onnx(source, out)
        assert not out.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_failed_verification_leaves_no_directory(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict"
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_onnx(model_dir, out, tolerance=-1.0)  # no export can pass: the refusal path
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_export_and_side_by_side_evaluation(model_dir: Path, data_file: Path, tmp_path: Path,
                                                fp32_dir: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-int8"
    result = runner.invoke(main, ["export-onnx", str(model_dir), str(out), "--quantize", "int8", "--opset", "17",
                                  "--data", str(data_file)])
    assert result.exit_code == 0, result.output
    assert "int8 ONNX model" in result.output and (out / "model.onnx").is_file()

    result = runner.invoke(main, ["evaluate", str(model_dir), str(fp32_dir), str(out), str(data_file),
                                  "--teacher", str(model_dir), "--speed-examples", "5", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["runtime"] for r in rows] == ["pytorch", "onnx-fp32", "onnx-int8"]
    assert rows[0]["accuracy"] == rows[1]["accuracy"]  # fp32 ONNX predicts as PyTorch does
    assert rows[0]["teacher_agreement"] == 1.0  # the same model as the reference
    for row in rows:
        assert row["examples"] == 40 and row["size_bytes"] > 0
        assert row["ms_per_example_batch1"] > 0 and row["examples_per_second_batch32"] > 0

    table = runner.invoke(main, ["evaluate", str(fp32_dir), str(data_file), "--speed-examples", "3"])
    assert table.exit_code == 0, table.output
    assert "ms/ex (b=1)" in table.output and "onnx-fp32" in table.output


def test_cli_refuses_a_directory_it_cannot_export(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    result = CliRunner().invoke(main, ["export-onnx", str(tmp_path / "plain"), str(tmp_path / "out")])
    assert result.exit_code == 2 and "no config.json" in result.output
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_labels_the_model_does_not_know(fp32_dir: Path, tmp_path: Path) -> None:
    bad = write_csv(tmp_path / "bad.csv", [{"text": "good film", "label": "neutral"}])
    with pytest.raises(ValueError, match="does not know"):
        compare([load_predictor(fp32_dir)], read_examples(bad).examples)


def test_predict_keeps_data_order(fp32_dir: Path) -> None:
    predictor = load_predictor(fp32_dir)
    texts = ["good", "bad film", "the plot was dull and the acting poor"]
    dataset = encode(predictor.tokenizer, texts, None, [0, 0, 0], 16)
    one_by_one = np.concatenate([predictor.logits(b) for b in batches_of(dataset, 1, 0)])
    np.testing.assert_allclose(predict(predictor, dataset), one_by_one, atol=1e-5)
