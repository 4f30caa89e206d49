"""The teacher cache: same targets and losses as the live teacher, reused, invalidated, built atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gkd.config import DistillConfig, Hyperparameters
from gkd.data.batching import collate, encode
from gkd.method.objective import TeacherTargets, student_loss_parts, teacher_targets
from gkd.method.properties import layer_map
from gkd.models.student import build_student
from gkd.models.teacher import Teacher, load_teacher
from gkd.training.teacher_cache import build_cache, open_or_build
from tests.support.factories import LABELS, make_tiny_teacher, sentiment_rows

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher"), num_layers=4)


@pytest.fixture()
def teacher(teacher_dir: Path) -> Teacher:
    return load_teacher(teacher_dir)


def dataset_of(teacher: Teacher, n: int = 40, seed: int = 0, max_length: int = MAX_LENGTH):
    rows = sentiment_rows(n, seed=seed)
    return encode(teacher.tokenizer, [r["text"] for r in rows], None, [LABELS.index(r["label"]) for r in rows],
                  max_length)


def fields(targets: TeacherTargets) -> dict[str, torch.Tensor]:
    return {name: getattr(targets, name) for name in
            ("logits", "unit_gradients", "saliency", "cls_states", "cls_unit_gradients")}


def test_cached_targets_equal_live_targets(teacher: Teacher, tmp_path: Path):
    dataset = dataset_of(teacher)
    cache, built = open_or_build(teacher.model, teacher.path, dataset, tmp_path, MAX_LENGTH)
    assert built
    # a training-like batch: unsorted rows of different lengths (so padding differs from the cache's batches)
    indices = [7, 0, 33, 12, 25, 3]
    batch = collate(dataset, indices)
    assert (batch.attention_mask == 0).any()
    live = fields(teacher_targets(teacher.model, batch))
    cached = fields(cache.targets(batch))
    for name, value in live.items():
        assert cached[name].shape == value.shape, name
        assert cached[name].dtype == torch.float32, name
        # fp16 storage: relative error ~1e-3 of unit-scale values
        assert torch.allclose(cached[name], value.float(), atol=2e-3, rtol=2e-3), name
    # padding stays exactly zero
    pad = batch.attention_mask == 0
    assert (cached["unit_gradients"][pad] == 0).all() and (cached["saliency"][pad] == 0).all()
    # gradients really are unit vectors at real tokens, and differ between tokens (not a constant)
    norms = cached["unit_gradients"][~pad].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=2e-3)
    assert cached["unit_gradients"][0, 1].sub(cached["unit_gradients"][0, 2]).abs().max() > 1e-2
    # the logits are per row: batch row k is dataset row indices[k]
    assert torch.allclose(cached["logits"], torch.from_numpy(np.asarray(cache.logits[indices])))


@pytest.mark.parametrize(("method", "vector_form"), [
    ("kd", True), ("pkd", True), ("gradient_kd", True), ("gradient_kd", False), ("gradient_kd_cls", True),
])
def test_student_loss_is_the_same_with_cached_and_live_targets(
    teacher: Teacher, tmp_path: Path, method: str, vector_form: bool
):
    dataset = dataset_of(teacher)
    cache, _ = open_or_build(teacher.model, teacher.path, dataset, tmp_path, MAX_LENGTH)
    config = DistillConfig.parse({"method": method, "teacher": "t", "data": {"train": "x"},
                                  "student": {"num_layers": 2}})
    student = build_student(teacher, config).eval()
    hp = Hyperparameters(beta=1.0, gamma=1.0)
    pairs = layer_map(4, 2)
    batch = collate(dataset, [5, 17, 2, 30])
    live = student_loss_parts(method, hp, student, batch, teacher_targets(teacher.model, batch), pairs, vector_form)
    cached = student_loss_parts(method, hp, student, batch, cache.targets(batch), pairs, vector_form)
    live_loss, live_terms, cached_loss, cached_terms = live.total, live.terms, cached.total, cached.terms
    assert float(cached_loss.detach()) == pytest.approx(float(live_loss.detach()), rel=2e-3, abs=1e-4)
    assert cached_terms.keys() == live_terms.keys()
    for name in live_terms:
        assert cached_terms[name] == pytest.approx(live_terms[name], rel=5e-3, abs=1e-4), name
    if method.startswith("gradient"):
        # random tiny models: unit gradients disagree a lot; normalised saliency profiles are close but not equal
        assert live_terms["grad"] > (1e-3 if vector_form else 0.0)


def test_cache_is_reused(teacher: Teacher, tmp_path: Path):
    dataset = dataset_of(teacher)
    first, built = open_or_build(teacher.model, teacher.path, dataset, tmp_path, MAX_LENGTH)
    assert built
    calls = []
    original = teacher.model.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    teacher.model.forward = counting
    second, built = open_or_build(teacher.model, teacher.path, dataset, tmp_path, MAX_LENGTH)
    assert not built
    assert calls == []  # the teacher did not run
    assert second.path == first.path
    assert np.array_equal(np.asarray(second.unit_grads), np.asarray(first.unit_grads))
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]
    assert (first.path / "meta.json").is_file()


def test_changed_teacher_weights_invalidate(teacher_dir: Path, tmp_path: Path):
    directory = tmp_path / "teacher"
    shutil.copytree(teacher_dir, directory)
    teacher = load_teacher(directory)
    dataset = dataset_of(teacher)
    cache_root = tmp_path / "cache"
    first, _ = open_or_build(teacher.model, directory, dataset, cache_root, MAX_LENGTH)
    with torch.no_grad():
        teacher.model.classifier.bias.add_(0.5)
    teacher.model.save_pretrained(str(directory), safe_serialization=True)
    changed = load_teacher(directory)
    second, built = open_or_build(changed.model, directory, dataset, cache_root, MAX_LENGTH)
    assert built
    assert second.path != first.path
    assert not np.allclose(np.asarray(second.logits), np.asarray(first.logits))


def test_changed_data_or_max_length_invalidate_and_refresh_rebuilds(teacher: Teacher, tmp_path: Path):
    dataset = dataset_of(teacher)
    base, _ = open_or_build(teacher.model, teacher.path, dataset, tmp_path, MAX_LENGTH)
    other_data, built = open_or_build(teacher.model, teacher.path, dataset_of(teacher, seed=1), tmp_path, MAX_LENGTH)
    assert built and other_data.path != base.path
    # one label changed only: the tokens (what the teacher sees) are the same, so the cache may be shared
    relabelled = dataset_of(teacher)
    relabelled.labels[0] = 1 - relabelled.labels[0]
    _, built = open_or_build(teacher.model, teacher.path, relabelled, tmp_path, MAX_LENGTH)
    assert not built
    # one token changed
    retokenised = dataset_of(teacher)
    retokenised.input_ids[3][1] = 10 if retokenised.input_ids[3][1] != 10 else 11
    _, built = open_or_build(teacher.model, teacher.path, retokenised, tmp_path, MAX_LENGTH)
    assert built
    longer = dataset_of(teacher, max_length=MAX_LENGTH * 2)
    assert longer.input_ids == dataset.input_ids  # same tokens: only the setting differs
    other_length, built = open_or_build(teacher.model, teacher.path, longer, tmp_path, MAX_LENGTH * 2)
    assert built and other_length.path != base.path
    refreshed, built = open_or_build(teacher.model, teacher.path, dataset, tmp_path, MAX_LENGTH, refresh=True)
    assert built and refreshed.path == base.path
    again, built = open_or_build(teacher.model, teacher.path, dataset, tmp_path, MAX_LENGTH)
    assert not built


def test_failed_build_leaves_nothing_behind(teacher: Teacher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    dataset = dataset_of(teacher)
    original = teacher.model.forward
    calls: list[int] = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("teacher crashed")
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher.model, "forward", flaky)
    cache_root = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="teacher crashed"):
        build_cache(teacher.model, dataset, cache_root / "key", batch_size=8)
    assert len(calls) == 3  # it failed in the middle, after two batches were written
    assert list(cache_root.iterdir()) == []

    def broken(*args, **kwargs):
        raise RuntimeError("teacher crashed again")

    monkeypatch.setattr(teacher.model, "forward", broken)
    with pytest.raises(RuntimeError, match="again"):
        open_or_build(teacher.model, teacher.path, dataset, cache_root, MAX_LENGTH)
    assert list(cache_root.iterdir()) == []
    # after the failure a working teacher builds the cache normally
    monkeypatch.setattr(teacher.model, "forward", original)
    _, built = open_or_build(teacher.model, teacher.path, dataset, cache_root, MAX_LENGTH)
    assert built
    assert len(list(cache_root.iterdir())) == 1


def test_half_written_directory_without_meta_is_rebuilt(teacher: Teacher, tmp_path: Path):
    dataset = dataset_of(teacher)
    cache, _ = open_or_build(teacher.model, teacher.path, dataset, tmp_path, MAX_LENGTH)
    (cache.path / "meta.json").unlink()
    _, built = open_or_build(teacher.model, teacher.path, dataset, tmp_path, MAX_LENGTH)
    assert built and (cache.path / "meta.json").is_file()
