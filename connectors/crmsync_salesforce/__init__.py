"""crmsync connector package (being written)."""
