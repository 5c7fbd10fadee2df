"""The pipeline's library: each stage is a plain function with typed inputs and outputs (no Prefect here)."""
