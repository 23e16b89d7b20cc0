"""The one exception type that means "the user gave us something we cannot use".

Library code raises ``UserError`` with a message that fits on one line and says what to do;
the command-line entry points print it to stderr without a traceback and exit with code 2.
Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a flag, a study file, a data directory, a storage URL, a config file."""

    exit_code = 2
