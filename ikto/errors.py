"""The error types a user can act on; the CLI prints them as one line."""


class IktoError(Exception):
    """An error with a message meant for a person: printed as `ikto: <message>`."""

    exit_code = 1


class UsageError(IktoError):
    """The user gave bad input (flags, config, key file): exit 2."""

    exit_code = 2
