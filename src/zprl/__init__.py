"""zprl."""
