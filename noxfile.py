"""nox sessions: tests (everything), unit, interop (real peers), bench, lint (ruff), typing (mypy)."""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def unit(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "tests/unit", *session.posargs)


@nox.session
def interop(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", external=True, cwd="tests/interop/js")
    session.run("pytest", "-q", "tests/interop", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "bench/overlay.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "rendezvous", "plugins", *session.posargs)


@nox.session
def typing(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("mypy", *session.posargs)  # files and options: [tool.mypy] in pyproject.toml
