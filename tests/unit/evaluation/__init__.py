"""Unit tests of evaluation (`components/evaluation`)."""
