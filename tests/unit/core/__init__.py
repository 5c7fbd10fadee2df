"""Unit tests of the core (`components/core`)."""
