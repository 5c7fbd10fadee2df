"""Unit tests of training (`components/training`)."""
