"""Helpers for working on this repository that the tests, the benchmarks (bench/) and the docs scripts (docs/)
share. Not part of the installed package: import it from the repository root, which pytest's `pythonpath` and the
scripts' own sys.path line put first."""
