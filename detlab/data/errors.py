"""The data layer's error. Its own module so that :mod:`detlab.data.images` and :mod:`detlab.data.records`, which
both raise it and one of which imports the other, need no import cycle; ``detlab.data.records`` re-exports it."""

from detlab.errors import DetlabError


class DataError(DetlabError, ValueError):
    """A dataset file is missing, unreadable or malformed; the message names the file and the field."""
