"""Commands registered on the ``crmsync`` group, one module each.

A module is imported when one of its commands is invoked (or when ``--help`` lists
them all): ``crmsync.cli.LAZY_COMMANDS`` names each command's module, so that a command
never pays for the imports of another (``crmsync --version`` imports none of them).
"""
