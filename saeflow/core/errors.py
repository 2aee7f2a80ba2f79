"""Named errors of saeflow.

Step Functions matches a Lambda error by the exception's class name, so every
error a step can raise is a subclass of :class:`SaeflowError` whose class name is
the stable error name written to ``error.json`` and used in ASL ``Retry``/``Catch``.

Contract (others rely on it):

- ``err.name`` is the class name (e.g. ``"InvalidPromptSet"``).
- ``err.message`` is the human message (``str(err)`` is the same text).
- ``err.line`` is the 1-based line of the input file the error is about, or ``None``.
- ``err.to_dict()`` -> ``{"error": name, "message": message}`` plus ``"line"`` when set;
  this is the body of ``error.json`` minus ``run_id``.
- :func:`is_invalid_input` tells whether an error name means "the user's input is bad"
  (CLI exit status 2) rather than an internal or service failure (exit status 1).
"""

from __future__ import annotations

from typing import Any


class SaeflowError(Exception):
    """Base class of every error saeflow raises on purpose."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    @property
    def name(self) -> str:
        """The stable error name: the class name (what ASL Catch matches)."""
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """The error as plain JSON: ``{"error", "message"}`` and ``"line"`` when known."""
        body: dict[str, Any] = {"error": self.name, "message": self.message}
        if self.line is not None:
            body["line"] = self.line
        return body

    def __str__(self) -> str:
        if self.line is not None:
            return f"line {self.line}: {self.message}"
        return self.message


# --- invalid input (CLI exit 2) -------------------------------------------------


class InvalidPromptSet(SaeflowError):
    """The prompt set is malformed: bad JSON, not UTF-8, empty, missing `prompt`..."""


class PromptSetTooLarge(InvalidPromptSet):
    """The prompt set exceeds the file-size or prompt-count limit."""


class UnsupportedPromptFile(SaeflowError):
    """The uploaded key has a suffix saeflow does not read (.jsonl, .txt, .json only)."""


class InvalidRunOptions(SaeflowError):
    """A run option is unknown, has the wrong type or is out of range."""


class SpendLimitExceeded(InvalidRunOptions):
    """A run asks for more than the deployment allows (e.g. training tokens over
    MaxTrainingTokens); raised at validation, before any GPU work."""


class ForbiddenInput(InvalidRunOptions):
    """A run names an object it may not read: a contrast set outside ``prompts/``, a corpus
    outside ``corpora/``, an SAE outside ``saes/``, or another bucket."""


class InvalidHook(SaeflowError):
    """The hook name does not parse, or its layer does not exist in the model."""


class PromptTooLong(SaeflowError):
    """A prompt exceeds the token (or, before tokenising, the byte) limit."""


class SaeNotFound(SaeflowError):
    """The requested SAE (saelens: id or s3:// directory) cannot be found."""


class LabelModelNotAllowed(InvalidRunOptions):
    """``label.model_id`` names a model outside the deployment's allow-list."""


# --- failures of the run itself (CLI exit 1) ----------------------------------


class QualityGateFailed(SaeflowError):
    """A freshly trained SAE failed the quality gate; it is not registered."""


class TrainingFailed(SaeflowError):
    """The SAE training job failed."""


class ExtractionFailed(SaeflowError):
    """The feature extraction (batch transform) failed or gave unusable output."""


class LabelerThrottled(SaeflowError):
    """The labeler's service throttled the request; retrying later can help."""


class LabelerOutOfTime(SaeflowError):
    """Too little time is left in this invocation for another labeller request; the work
    done so far is saved and a retry (the Map's Retry) carries on from it."""


class LabelerError(SaeflowError):
    """The labeler failed in a way retrying cannot fix."""


class ReportError(SaeflowError):
    """The report could not be built or written."""


# --- flow control: retried by the state machine, a failure only when retries run out ----


class RunQueued(SaeflowError):
    """The deployment's concurrent-run limit is reached: the run waits (the state machine
    retries); it fails with this name only after waiting for hours."""


class SaeRegistrationInProgress(SaeflowError):
    """Another run is registering the same SAE; this run waits for it and then uses it."""


class ObjectNotFound(SaeflowError, KeyError):
    """An object store key does not exist (raised by ObjectStore adapters)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return SaeflowError.__str__(self)


INVALID_INPUT_ERRORS: frozenset[str] = frozenset(
    {
        "InvalidPromptSet",
        "PromptSetTooLarge",
        "UnsupportedPromptFile",
        "InvalidRunOptions",
        "SpendLimitExceeded",
        "ForbiddenInput",
        "InvalidHook",
        "PromptTooLong",
        "SaeNotFound",
        "LabelModelNotAllowed",
    }
)

ALL_ERRORS: dict[str, type[SaeflowError]] = {
    cls.__name__: cls
    for cls in (
        SaeflowError,
        InvalidPromptSet,
        PromptSetTooLarge,
        UnsupportedPromptFile,
        InvalidRunOptions,
        SpendLimitExceeded,
        ForbiddenInput,
        InvalidHook,
        PromptTooLong,
        SaeNotFound,
        LabelModelNotAllowed,
        QualityGateFailed,
        TrainingFailed,
        ExtractionFailed,
        LabelerThrottled,
        LabelerOutOfTime,
        LabelerError,
        ReportError,
        RunQueued,
        SaeRegistrationInProgress,
        ObjectNotFound,
    )
}


def is_invalid_input(name: str) -> bool:
    """True when the error name means the user's input was bad (CLI exit status 2)."""
    return name in INVALID_INPUT_ERRORS
