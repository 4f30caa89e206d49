"""What a fine-tuning is, without torch: its name as a job method, its defaults, the hyperparameters it uses and
the student it trains. The service validates `method: "finetune"` job bodies with these (app/routes/finetune.py);
`gkd.training.finetune` runs them."""

from __future__ import annotations

from typing import Any

FINETUNE = "finetune"
"""The job method that makes a teacher from a base encoder (docs/design.md, "Making a teacher")."""

# Usual settings for fine-tuning a BERT-style encoder (Devlin et al. 2019 recommend 2-4 epochs at 2e-5 to
# 5e-5); a teacher is trained once, so it gets the full length and several epochs.
FINETUNE_EPOCHS = 3
FINETUNE_LEARNING_RATE = 5e-5
FINETUNE_MAX_LENGTH = 128
FINETUNE_DEFAULTS: dict[str, Any] = {"epochs": FINETUNE_EPOCHS, "learning_rate": FINETUNE_LEARNING_RATE,
                                     "max_length": FINETUNE_MAX_LENGTH}
"""Where a fine-tuning's defaults differ from a distillation's (`gkd.config.Hyperparameters`)."""

FINETUNE_HYPERPARAMETERS = frozenset({
    "epochs", "batch_size", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm",
    "gradient_accumulation_steps", "max_length", "seed", "eval_every_steps", "length_bucketing", "n_checkpoints",
})
"""The hyperparameters a fine-tuning uses; the rest (temperature, alpha, beta...) weigh distillation terms."""

TRAINED_AS = "ce"
"""A fine-tuning is the `ce` method at the base encoder's full depth."""


def finetune_student(depth: int) -> dict[str, Any]:
    """The `student` of a fine-tuning: the base encoder at its full depth, every layer copied (a pooler it ships
    with is kept), a fresh classifier."""
    return {"num_layers": depth, "init": "bottom"}
