"""Training: the optimizer, the jitted step, the loop, checkpoints, run directories and metrics."""
