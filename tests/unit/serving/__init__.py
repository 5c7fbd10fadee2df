"""Unit tests of serving (`components/serving`)."""
