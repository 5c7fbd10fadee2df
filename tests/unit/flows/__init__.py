"""Unit tests of the flows and the command line (`flows/`)."""
