"""Quiet-by-default logging for zprl's command-line tools.

Known-harmless third-party messages are dropped at their source (the logger or warning that emits them), and
one switch shows everything again: ``--verbose`` on the command line, or ``ZPRL_LOG_LEVEL=DEBUG`` in the
environment (any ``logging`` level name works: ``WARNING`` also hides zprl's and Lightning's progress notes).
The CLI writes the level into ``ZPRL_LOG_LEVEL``, so env worker processes and ``zprl compare``'s child runs
inherit it; :func:`zprl.compat` applies the same filters in every process that builds a robosuite env.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

LOG_LEVEL_ENV = "ZPRL_LOG_LEVEL"

# robosuite and robomimic warn at import, in every process, when they find no private macro file (a module
# of setting overrides); an empty one keeps their defaults, which are right for zprl.
PRIVATE_MACRO_PACKAGES = ("robosuite", "robomimic")
# logger name -> message fragments that are known to be harmless on the supported stack (see STACK.md)
KNOWN_HARMLESS_LOGS: dict[str, tuple[str, ...]] = {
    # Without a system FFmpeg, LeRobot logs torchcodec's ~100-line load error, then decodes videos with pyav.
    "lerobot.utils.import_utils": ("'torchcodec' is installed but cannot be loaded",),
    # Lightning advertises its cloud services (litlogger, litmodels) at every fit.
    "lightning.pytorch.utilities.rank_zero": ("Tip: For seamless cloud",),
}
# (category, message regex, module regex) of warnings that are known to be harmless
KNOWN_HARMLESS_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # PretrainModule builds its policy in configure_model; nothing is sharded, so EMA needs one copy of the weights.
    (UserWarning, r"You're using the WeightAveraging callback with a model that overrides the configure_model", ""),
    # Lightning's own pytree helper uses torch's deprecated LeafSpec (Lightning 2.6 with torch 2.11).
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", ""),
    # pygame (under gym-pusht) imports pkg_resources at import time.
    (UserWarning, r"pkg_resources is deprecated as an API", ""),
    # robosuite/__init__.py's ASCII logo has a backslash in a plain string (a compile-time warning, whose
    # "module" is the file path without .py).
    (SyntaxWarning, r"invalid escape sequence", r".*robosuite[/\\]__init__$"),
)


class _DropMessages(logging.Filter):
    """Drops records whose message contains one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]):
        super().__init__("zprl.known_harmless")
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(fragment in message for fragment in self.fragments)


def log_level() -> int:
    """The level named by ``ZPRL_LOG_LEVEL`` (a name such as ``DEBUG`` or a number); ``INFO`` when unset."""
    value = os.environ.get(LOG_LEVEL_ENV, "INFO").strip().upper()
    if value.isdigit():
        return int(value)
    levels = logging.getLevelNamesMapping()
    if value not in levels:
        raise ValueError(f"{LOG_LEVEL_ENV}={value!r} is not a logging level; use DEBUG, INFO, WARNING or ERROR.")
    return levels[value]


def use_default_macros() -> None:
    """Register an empty ``<package>.macros_private`` for robosuite and robomimic unless the user has written one."""
    for package in PRIVATE_MACRO_PACKAGES:
        name = f"{package}.macros_private"
        spec = importlib.util.find_spec(package)  # a top-level spec: the package itself is not imported
        if name in sys.modules or spec is None or not spec.submodule_search_locations:
            continue
        if any((Path(folder) / "macros_private.py").exists() for folder in spec.submodule_search_locations):
            continue  # the user's own macros
        sys.modules[name] = types.ModuleType(name, "Empty private macros registered by zprl: the defaults apply.")


def silence_known_harmless() -> None:
    """Drop the messages listed in this module unless the level is ``DEBUG`` (idempotent, cheap, no imports)."""
    if log_level() <= logging.DEBUG:
        return
    use_default_macros()
    for name, fragments in KNOWN_HARMLESS_LOGS.items():
        logger = logging.getLogger(name)  # the same object the library gets later, so the filter is in place
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragments))
    for category, message, module in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Swallow a library's ``print`` chatter (robomimic's env banners, per env and worker) in a zprl command.

    Only where a zprl command configured logging (``ZPRL_LOG_LEVEL`` set) and below ``DEBUG``; a plain library
    user sees everything.
    """
    if LOG_LEVEL_ENV not in os.environ or log_level() <= logging.DEBUG:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def configure_logging(verbose: bool = False) -> int:
    """Set up a command-line process: level from ``--verbose`` / ``ZPRL_LOG_LEVEL``, harmless messages dropped.

    ``zprl`` and ``lightning`` loggers get the level (INFO by default: progress notes and results stay visible);
    the level is written back to ``ZPRL_LOG_LEVEL`` so subprocesses and env workers behave the same.
    """
    if verbose:
        os.environ[LOG_LEVEL_ENV] = "DEBUG"
    level = log_level()
    os.environ[LOG_LEVEL_ENV] = logging.getLevelName(level)
    for name in ("zprl", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(level)
    zprl_logger = logging.getLogger("zprl")
    if not zprl_logger.handlers:  # zprl's own notes go to stderr without a timestamp, like Lightning's
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        zprl_logger.addHandler(handler)
        zprl_logger.propagate = False
    silence_known_harmless()
    return level
