"""Unit tests of monitoring (`components/monitoring`)."""
