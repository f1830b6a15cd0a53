"""Training and evaluation engine: trainer, evaluator, checkpoints, distributed helpers, logging."""
