# SPDX-License-Identifier: Apache-2.0
"""The service's domain errors.

Backends and the data plane raise only these; each transport maps them once (HTTP status
+ JSON body, gRPC status code). Every message says what was wrong and what to do.
"""


class MLOSError(Exception):
    """Base class: a request failed for a reason the client can act on."""


class ModelNotFoundError(MLOSError):
    """No model (or version) by that name in the registry."""


class ModelNotReadyError(MLOSError):
    """The model exists but is not loaded (or is unloading)."""


class InvalidInputError(MLOSError):
    """The request is malformed: wrong tensor name, shape, datatype, JSON, parameter."""


class InvalidParamError(InvalidInputError):
    """A bad request field: the OpenAI error body names it in `param` (and `code`)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class ModelLoadError(MLOSError):
    """A model file is missing, corrupt or in a format no installed backend serves."""


class PayloadTooLargeError(MLOSError):
    """The request body or a tensor exceeds the configured limit."""


class ServerBusyError(MLOSError):
    """Concurrency limit or queue full: retry later."""


class RequestTimeoutError(MLOSError):
    """The request did not finish within the configured timeout."""


class UnauthorizedError(MLOSError):
    """Missing or wrong API key."""


class UnsupportedError(MLOSError):
    """The model or server lacks the capability the request needs (e.g. text generation)."""
