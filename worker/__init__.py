"""Celery worker of the gkd service: runs distillation jobs with `gkd.trainer.Trainer`."""
