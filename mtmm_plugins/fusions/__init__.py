"""Built-in fusions."""
