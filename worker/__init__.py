"""Celery worker of the gkd service: runs distillation jobs with `gkd.training.trainer.Trainer`."""
