"""Where runtime servers run: the backend interface and its local-process implementation."""
