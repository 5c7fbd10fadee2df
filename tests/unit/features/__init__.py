"""Unit tests of features (`components/features`)."""
