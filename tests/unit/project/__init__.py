"""Unit tests of the repository as a whole: docs, README, benchmarks, DVC, the code's shape."""
