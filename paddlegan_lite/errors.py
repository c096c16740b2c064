"""The one exception type tools turn into a single line and a non-zero exit."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, bad input): shown as one line."""
