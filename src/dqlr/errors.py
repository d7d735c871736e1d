"""One exception type for every user-facing problem, so the CLI can print it on one line."""


class DqlrError(Exception):
    """A problem the user can fix (bad file, bad option, bad config); message is one line."""


class DqlrWarning(UserWarning):
    """Something about the input the user should know (e.g. it was enhanced upside down); one line."""
