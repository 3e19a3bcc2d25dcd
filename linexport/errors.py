"""The one exception type users see."""


class LinexportError(Exception):
    """A problem with the user's input or environment.

    Messages say what was expected, what was found, and how to fix it. The CLI prints
    them without a traceback; library callers catch this one type.
    """
