"""Helpers the bench/*.py scripts share (a folder, so that the docs' benchmarks page, one section per bench/*.py,
does not take them for a benchmark)."""
