"""User-facing errors: one line that names the problem and the fix."""


class RejuvError(Exception):
    """A problem with the user's input or environment. The CLI prints it as one line, no traceback."""
