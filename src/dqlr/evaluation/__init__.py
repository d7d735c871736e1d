"""Judging results: metrics by depth (with or without a clean reference) and classical baselines."""
