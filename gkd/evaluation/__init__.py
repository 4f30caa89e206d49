"""Evaluation: metrics (accuracy, macro-F1, teacher and saliency agreement), evaluating a model on data, and
per-token saliency of a student next to its teacher."""
