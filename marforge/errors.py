"""Typed errors for marforge: one class per outcome, each with an exit code and a next step.

The CLI maps these to a message and an exit code; everything else is a bug and is shown with a
traceback only when MARFORGE_DEBUG is set.
"""

USER_ERROR = 1  # the input, the registry or a file the user controls is wrong
INFRA_ERROR = 2  # the server, a subprocess or the machine failed


class MarforgeError(Exception):
    """Base class: `message` says what failed, `hint` says what to run next."""

    exit_code = USER_ERROR

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self):
        return self.message if not self.hint else f"{self.message}\n  next: {self.hint}"


class RegistryError(MarforgeError):
    """models.toml is missing, malformed, or names something that does not exist."""


class WeightsError(MarforgeError):
    """A weights file or its metadata is missing, mismatched or not a plain state_dict."""


class ArchiveError(MarforgeError):
    """Building or verifying a .mar archive failed."""


class ServerError(MarforgeError):
    """TorchServe could not be started, stopped or reached."""

    exit_code = INFRA_ERROR


class ApiError(ServerError):
    """TorchServe answered an HTTP request with an error status."""

    def __init__(self, status, url, body, hint=None):
        super().__init__(f"HTTP {status} from {url}: {body.strip()[:500]}", hint)
        self.status = status
        self.url = url
        self.body = body
