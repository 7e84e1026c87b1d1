"""The one user-facing error type; the CLI turns it into one line and exit code 2."""


class HarnessError(Exception):
    """Bad input or configuration: message names the file, the field and what is allowed."""

    exit_code = 2
