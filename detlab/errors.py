"""The base of detlab's expected errors: a bad setting, data file, checkpoint or resume, or a training run that had
to stop. The tools print such an error as one line and exit with code 2; any other exception is a bug and keeps its
traceback. Each layer defines its own subclass next to the code that raises it (``ConfigError`` in
:mod:`detlab.config`, ``DataError`` in :mod:`detlab.data.errors`, ``CheckpointError`` in
:mod:`detlab.engine.checkpoint`, ...); this module imports nothing, so every layer may import it."""


class DetlabError(Exception):
    """An expected error whose message (one line) names the setting, file or argument and says what to do."""
