"""Built-in weightings."""
