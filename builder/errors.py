# SPDX-License-Identifier: Apache-2.0
"""The one error type mlos-build reports to users: a sentence and a hint."""


class BuildError(Exception):
    """A predictable failure, shown as one line plus a hint (traceback only with --debug)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message
