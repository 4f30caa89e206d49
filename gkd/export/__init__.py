"""Export: trained students written as Hugging Face checkpoints with a `gkd_card.json`."""
