"""The distillation method: each method's properties (`properties`), its losses as pure tensor functions
(`losses`), the forward/double-backward plumbing that builds them (`objective`), the gradient-term cap and
mixed precision."""
