"""The errors a user can cause, as opposed to bugs in vrl.

Each is raised with a message that names what was wrong and where (file, line, field) and how to
fix it; `vrl` prints that message as one line and exits with status 2, never a traceback. Code that
catches user mistakes catches `VRLError`.
"""

from __future__ import annotations


class VRLError(Exception):
    """A problem with the user's input or run folder; its message is the whole report."""


class ConfigError(VRLError, ValueError):
    """A recipe or override that does not fit the config; the message names file and field."""


class RunError(VRLError, RuntimeError):
    """A run that cannot start or go on: a used run folder, a resume that does not fit its
    checkpoint, training that keeps producing non-finite updates."""
