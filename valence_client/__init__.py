"""Typed clients for the Valence emotion API and the Valsea prosody API.

    from valence_client import ValenceClient, ValseaClient

`ValenceClient` keeps the public `valenceai` SDK's surface (`discrete`, `asynch`, `rate_limit`,
`streaming`, same exception names); both clients share one transport design (timeouts, retries,
pacing) and return the typed models of `valence_client.models`. The streaming API (Socket.IO)
lives in `valence_client.streaming`, its wire models in `valence_client.stream_protocol`.
"""

from valence_client._logging import PACKAGE_LOGGER, get_logger
from valence_client.client import AsyncAPI, DiscreteAPI, RateLimitAPI, ValenceClient
from valence_client.errors import (
    APIConnectionError,
    AudioTooLongError,
    AudioTooShortError,
    AuthenticationError,
    FileSizeLimitExceededError,
    InsufficientCreditsError,
    InvalidInputError,
    InvalidRequestError,
    JobNotReadyError,
    MissingFileError,
    NotFoundError,
    PredictionError,
    RateLimitError,
    ServerError,
    UploadError,
    ValenceSDKException,
    error_from_response,
)
from valence_client.limiter import DEFAULT_LIMITS, RateLimiter, WindowRateLimiter, shared_limiter
from valence_client.polling import PollPolicy, wait_for_job
from valence_client.streaming import ReconnectPolicy, SendQueueFullError, StreamConnection, StreamingAPI
from valence_client.transport import RetryPolicy, Transport, TransportStats
from valence_client.upload import MultipartUploader, PartSizeAdjuster
from valence_client.valsea import ValseaClient

# Records logged straight on the package logger are redacted too (module loggers have their own).
get_logger(PACKAGE_LOGGER)

__all__ = [
    "DEFAULT_LIMITS",
    "APIConnectionError",
    "AsyncAPI",
    "AudioTooLongError",
    "AudioTooShortError",
    "AuthenticationError",
    "DiscreteAPI",
    "FileSizeLimitExceededError",
    "InsufficientCreditsError",
    "InvalidInputError",
    "InvalidRequestError",
    "JobNotReadyError",
    "MissingFileError",
    "MultipartUploader",
    "NotFoundError",
    "PartSizeAdjuster",
    "PollPolicy",
    "PredictionError",
    "RateLimitAPI",
    "RateLimitError",
    "RateLimiter",
    "ReconnectPolicy",
    "RetryPolicy",
    "SendQueueFullError",
    "ServerError",
    "StreamConnection",
    "StreamingAPI",
    "Transport",
    "TransportStats",
    "UploadError",
    "ValenceClient",
    "ValenceSDKException",
    "ValseaClient",
    "WindowRateLimiter",
    "error_from_response",
    "shared_limiter",
    "wait_for_job",
]
