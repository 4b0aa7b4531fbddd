"""nox sessions: tests (everything), unit, interop (real peers), bench, lint (ruff), typing (mypy)."""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


def _pytest(session: nox.Session, *paths: str) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *paths, *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    _pytest(session)


@nox.session
def unit(session: nox.Session) -> None:
    _pytest(session, "tests/unit")


@nox.session
def interop(session: nox.Session) -> None:
    session.run("npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", external=True, cwd="tests/interop/js")
    _pytest(session, "tests/interop")


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
