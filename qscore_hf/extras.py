"""The optional extras of pyproject.toml, and the one line that names the extra a command lacks.

Light on purpose (no torch): it answers before anything heavy is imported. tests/test_dependencies.py checks the
modules listed here against pyproject.toml's extras.
"""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["EXTRA_MODULES", "extra_of", "install_command", "missing_extra_message", "missing_module", "require_extra"]

# extra -> the modules it brings that our code imports (the import names of its distributions)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {"train": ("lightly", "tensorboard", "yaml")}


def install_command(extra: str) -> str:
    """``pip install "qscore-hf[<extra>]"``."""
    return f'pip install "qscore-hf[{extra}]"'


def missing_module(extra: str) -> str | None:
    """The first module of ``extra`` that is not installed, or ``None``."""
    for module in EXTRA_MODULES[extra]:
        try:
            if find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def extra_of(module: str) -> str | None:
    """The extra that brings ``module`` (a dotted name is looked up by its top-level package), or ``None``."""
    top = module.split(".")[0]
    return next((extra for extra, modules in EXTRA_MODULES.items() if top in modules), None)


def missing_extra_message(prog: str, extra: str, module: str) -> str:
    """``<prog>: error: this command needs the `<extra>` extra (<module> is not installed): pip install ...``."""
    return (f"{prog}: error: this command needs the `{extra}` extra ({module} is not installed): "
            f"{install_command(extra)}")  # fmt: skip


def require_extra(extra: str, prog: str) -> None:
    """Exit with :func:`missing_extra_message` (status 1) when a module of ``extra`` is not installed."""
    module = missing_module(extra)
    if module is not None:
        raise SystemExit(missing_extra_message(prog, extra, module))
