"""Unit tests of the models (`components/models`)."""
