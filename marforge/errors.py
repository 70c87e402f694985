"""Every outcome marforge reports as an error: one class each, with an exit code and a next step.

The CLI prints `message` and `hint` and exits with `exit_code`; anything else that escapes is a bug
and is shown with a traceback (MARFORGE_DEBUG=1 shows one for these too).

    exit 1  USER_ERROR    the input, the registry or a file the user controls is wrong
    exit 2  INFRA_ERROR   the server, a subprocess or the machine failed
    exit 3  Rejected      a rollout refused its candidate; the server is as it was
    exit 4  RolledBack    a rollout promoted its candidate, the watch failed, the old default is back
"""

from typing import Any

USER_ERROR = 1
INFRA_ERROR = 2


class MarforgeError(Exception):
    """Base class: `message` says what failed, `hint` says what to run next, `report` (when given)
    is the result of the run that failed (a rollout's or soak's report; `--json` prints it)."""

    exit_code = USER_ERROR

    def __init__(self, message: str, hint: str | None = None, *, report: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.report = report

    def _arguments(self) -> tuple[Any, ...]:
        """The positional arguments this error was built from (a subclass with its own names overrides it)."""
        return (self.message, self.hint)

    def with_report(self, report: Any) -> "MarforgeError":
        """A new error of the same class, message, hint and exit code, carrying `report`."""
        return type(self)(*self._arguments(), report=report)

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  next: {self.hint}"


class RegistryError(MarforgeError):
    """models.toml is missing, malformed, or names something that does not exist."""


class WeightsError(MarforgeError):
    """A weights file or its metadata is missing, mismatched or not a plain state_dict."""


class CheckpointError(WeightsError):
    """A foreign checkpoint cannot be imported: not a checkpoint, unsafe, or not this model's."""


class ExportedModelError(MarforgeError):
    """A file given as an exported model (TorchScript, ONNX, torch.export) is not one, or cannot be loaded."""


class ArchiveError(MarforgeError):
    """Building or verifying a .mar archive failed."""


class DataError(MarforgeError):
    """A data set or a labelled image folder is missing or malformed."""


class ServerError(MarforgeError):
    """TorchServe could not be started, stopped or reached."""

    exit_code = INFRA_ERROR


class ApiError(ServerError):
    """TorchServe answered an HTTP request with an error status."""

    def __init__(self, status: int, url: str, body: str, hint: str | None = None, *, report: Any = None) -> None:
        super().__init__(f"HTTP {status} from {url}: {body.strip()[:500]}", hint, report=report)
        self.status = status
        self.url = url
        self.body = body

    def _arguments(self) -> tuple[Any, ...]:
        return (self.status, self.url, self.body, self.hint)


class Rejected(MarforgeError):
    """A rollout refused its candidate (or a rollback had nothing to go back to); the server is unchanged."""

    exit_code = 3


class RolledBack(MarforgeError):
    """A rollout promoted its candidate, the watch failed, and the previous default was restored."""

    exit_code = 4


class MeasurementFailed(MarforgeError):
    """A soak or benchmark ran and its verdict is a failure (errors, growth, drift)."""
