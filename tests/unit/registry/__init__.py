"""Unit tests of the registry (`components/registry`)."""
