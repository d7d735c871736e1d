"""Applying a trained model to whole stacks: tiles, streaming, several files."""
