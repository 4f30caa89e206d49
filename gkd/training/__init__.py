"""Training: the `Trainer` loop and its resumable state, callbacks (progress, run log), data parallelism, the
teacher cache, memory settings, and the example teacher."""
