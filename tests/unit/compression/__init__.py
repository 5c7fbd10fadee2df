"""Unit tests of compression (`components/compression`)."""
