"""MLflow tracking: a parent run per pipeline run, child runs, heartbeats, and what stages log to them.
"""
