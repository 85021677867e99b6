"""The errors a user can fix, each reported as one line without a traceback (runner.__main__ and the commands catch
UserError). A leaf: every module of runner may raise them, and this one imports nothing of runner's.

Plain Python: raised before torch is imported or any data is read."""


class UserError(Exception):
    """Something the user can fix: reported as one line, without a traceback."""


class ConfigError(UserError, ValueError):
    """A bad value in the user's config: the message names the key, the value, what is allowed."""


class DataError(UserError, RuntimeError):
    """Data that cannot be used as it is: the message names the file and what to do."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used (missing, damaged, hostile, not a checkpoint, not the kind needed): the
    message names the file, what is wrong and what to do."""
