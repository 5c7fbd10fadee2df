"""Unit tests of tracking (`components/tracking`)."""
