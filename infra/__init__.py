"""Production stack: configuration and scripts that run the same DAGs on PostgreSQL, Redis and an MLflow server."""
