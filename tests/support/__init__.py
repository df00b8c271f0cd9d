"""Real servers and fixtures shared by the test modules (an MLflow server, a DBFS stand-in)."""
