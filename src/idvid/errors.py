"""User errors, and the one way every verb prints them.

A *user error* is a mistake the user can fix (a bad config value, a missing file, a plan refused at
start-up); its message names the bad value and the fix. The CLI prints it as a clean multi-line
message with no traceback; a bug (any other exception) keeps its full traceback. The kit counts as
user errors:

* ``UserError`` and its subclasses (``ConfigError`` is also a ``ValueError``, ``MissingFileError`` a
  ``FileNotFoundError``, so callers and tests that catch the built-in types keep working);
* a ``ValueError`` / ``FileNotFoundError`` / ``KeyError`` raised by the kit's own code (an ``idvid``
  module, or a plugin module named ``idvid_*``): the kit's convention is that these carry a message
  for the user;
* ``hydra.errors.InstantiationException``: building an object from a config node failed, i.e. a
  config value does not fit the class it is given to;
* an OmegaConf error raised while the config resolves (an interpolation to a key that does not
  exist, a ``???`` value left unset); when a resolver raised a user error underneath (e.g.
  ``${idvid.face_embedding_dim:${data.manifest}}`` on a bad manifest), the resolver's message is the
  one that names the problem, so it is printed instead of OmegaConf's wrapper.

``HYDRA_FULL_ERROR=1`` or ``IDVID_TRACEBACK=1`` shows the traceback of a user error too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import TracebackType

TRACEBACK_VARIABLES = ("IDVID_TRACEBACK", "HYDRA_FULL_ERROR")
# Set by ``registry.build`` on an exception a plugin raised while building itself: "<kind> plugin 'name' (class)".
PLUGIN_ERROR_ATTRIBUTE = "idvid_raised_by_plugin"
TRACEBACK_HINT = "(traceback: run again with IDVID_TRACEBACK=1)"


class UserError(Exception):
    """A mistake the user can fix: ``UserError(what is wrong, how to fix it)``."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n{fix}")

    def __str__(self) -> str:  # KeyError's repr-quoting must not reach subclasses that are also KeyErrors
        return self.args[0]


class ConfigError(UserError, ValueError):
    """A config value (or a combination of them) the kit refuses."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist or is not what the verb needs."""


class UnknownNameError(UserError, KeyError):
    """A registered name (plugin, format, face backend) that is not registered."""


class ConfigKeyError(UserError, TypeError):
    """Config keys that do not fit the parameters of the plugin (or class) they are given to."""


class ConfigTypeError(UserError, TypeError):
    """Config values of the wrong type (``trainer.max_steps=abc``), named with the type expected."""


class CorruptFileError(UserError, ValueError):
    """A file the verb needs exists but cannot be read: truncated, corrupt, or not what it should be."""


KIT_ERROR_TYPES = (ValueError, FileNotFoundError, KeyError)


def _raised_by_kit(traceback: TracebackType | None) -> bool:
    """Whether the innermost frame of ``traceback`` is in the kit or one of its ``idvid_*`` plugins."""
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    module = str(traceback.tb_frame.f_globals.get("__name__", ""))
    return module.split(".")[0] == "idvid" or module.startswith("idvid_")


def resolver_error(error: BaseException) -> BaseException | None:
    """The user error a resolver raised under OmegaConf's interpolation error(s), or None.

    OmegaConf re-raises a resolver's exception inside its own (``__context__`` chain, no ``__cause__``).
    """
    from omegaconf.errors import OmegaConfBaseException

    inner = error
    while isinstance(inner, OmegaConfBaseException) and inner.__context__ is not None:
        inner = inner.__context__
    if inner is error or isinstance(inner, OmegaConfBaseException):
        return None
    return inner if is_user_error(inner) else None


def plugin_bug(error: BaseException) -> BaseException | None:
    """The exception a plugin raised while building itself (not a user error), found under Hydra's wrapper, or None."""
    from hydra.errors import InstantiationException

    inner = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ is not None else error
    if getattr(inner, PLUGIN_ERROR_ATTRIBUTE, None) is None or _is_user_error_itself(inner):
        return None
    return inner


def _is_user_error_itself(error: BaseException) -> bool:
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    if isinstance(error, UserError) or resolver_error(error) is not None:
        return True
    if isinstance(error, (InterpolationResolutionError, MissingMandatoryValue)):
        return True  # a config that does not resolve: OmegaConf's message names the key
    return isinstance(error, KIT_ERROR_TYPES) and _raised_by_kit(error.__traceback__)


def is_user_error(error: BaseException) -> bool:
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException):
        return plugin_bug(error) is None  # a node that does not fit its class, unless the plugin itself failed
    return _is_user_error_itself(error)


def message_of(error: BaseException) -> str:
    """The user-facing text of a user error: its message, never its repr."""
    from hydra.errors import InstantiationException

    resolved = resolver_error(error)
    if resolved is not None:
        return message_of(resolved)
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        cause = error.__cause__
        if is_user_error(cause):
            return message_of(cause)
        # Hydra's own message quotes the cause's repr; say which node failed and the cause's own words.
        first_line = str(error).splitlines()[0]
        return f"{first_line}\n{type(cause).__name__}: {message_of(cause)}\nFix the config values of that node."
    if isinstance(error, KeyError) and not isinstance(error, UserError) and len(error.args) == 1:
        return str(error.args[0])  # str(KeyError) is the repr of its message
    return str(error)


def traceback_wanted() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in TRACEBACK_VARIABLES)


def format_user_error(verb: str, error: BaseException) -> str:
    lines = message_of(error).strip().splitlines() or [type(error).__name__]
    text = f"idvid {verb}: error: {lines[0]}\n" + "".join(f"  {line}\n" for line in lines[1:])
    return text + f"  {TRACEBACK_HINT}\n"


@contextlib.contextmanager
def reported_as_user_errors(verb: str) -> Iterator[None]:
    """Print a user error raised inside as the kit's clean message and exit with status 1.

    Anything else propagates with its traceback, and so does a user error when a traceback is
    wanted (``IDVID_TRACEBACK=1`` / ``HYDRA_FULL_ERROR=1``).
    """
    try:
        yield
    except Exception as error:
        bug = plugin_bug(error)
        if bug is not None:  # the plugin's own error, with its own traceback rather than Hydra's wrapper
            if not getattr(bug, "idvid_reported", False):  # verbs nest this context (the CLI, then Hydra's task)
                sys.stderr.write(
                    f"idvid {verb}: {getattr(bug, PLUGIN_ERROR_ATTRIBUTE)} failed while building itself:\n"
                )
                bug.idvid_reported = True
            raise bug from None
        if traceback_wanted() or not is_user_error(error):
            raise
        sys.stderr.write(format_user_error(verb, error))
        sys.stderr.flush()
        raise SystemExit(1) from None
