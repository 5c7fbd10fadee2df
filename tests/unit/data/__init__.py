"""Unit tests of the data layer (`components/data`)."""
