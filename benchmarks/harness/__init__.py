"""Benchmark harness: peers run in their own environments and settings tuned against clean data.

Never imported by the dqlr package; the benchmark scripts and their tests use it.
"""
