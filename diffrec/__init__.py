"""diffrec."""
