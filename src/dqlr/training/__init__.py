"""Self-supervised training: window samplers, the loss and the Trainer."""
