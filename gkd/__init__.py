"""gkd: Gradient Knowledge Distillation (Wang, Li, Sun, arXiv 2211.01071) for text classifiers.

The library is usable without the service: `gkd.config.DistillConfig` describes a run,
`gkd.trainer.Trainer` runs it, `gkd.export` writes Hugging Face checkpoints. Heavy modules (torch,
transformers) are imported by those submodules only, so `gkd.client` stays light.
"""

__version__ = "0.1.0"
