"""Development sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest arguments after --)."""
    session.install("-e", ".[test]", "-e", "docs/examples/crmsync-example-connector",
                    "-e", "docs/examples/crmsync-example-hublike")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the whole tree."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy (strict) on the core and the connectors ([tool.mypy] packages)."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", "--strict", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks: each prints one table."""
    session.install("-e", ".[test]")
    for script in ("batch", "realtime", "mailup_calls", "salesforce_calls", "sugarcrm_calls",
                   "vtiger_calls"):
        session.run("python", f"benchmarks/{script}.py", *session.posargs)
