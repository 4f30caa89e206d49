"""A run's splits (gkd.data.splits.load_splits) and its dev split alone (dev_split, what the saliency view shows)
are the same rows."""

from __future__ import annotations

from pathlib import Path

from gkd.config import DataSpec
from gkd.data.splits import dev_split, load_splits
from tests.support.factories import sentiment_rows, write_csv


def test_dev_split_is_the_runs_dev_split(tmp_path: Path) -> None:
    rows = sentiment_rows(40)
    rows[3]["text"] = "   "  # empty rows are split like any other (the trainer drops them later)
    train = write_csv(tmp_path / "train.csv", rows)
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(6, seed=2))
    held_out = DataSpec(train=str(train), dev_fraction=0.25, split_seed=7)
    assert dev_split(held_out) == load_splits(held_out)["dev"]
    assert len(dev_split(held_out)) == 10
    given = DataSpec(train=str(tmp_path / "absent.csv"), dev=str(dev))  # only the dev file is read
    assert [e.text for e in dev_split(given)] == [r["text"] for r in sentiment_rows(6, seed=2)]
