"""Commands registered on the ``crmsync`` group, one module each."""
