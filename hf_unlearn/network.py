"""Bounded Hub calls and secret-free messages.

Without bounds, `push_to_hub` waited forever on a stalled endpoint (huggingface_hub's shared client has no timeout)
and loading an unreachable Hub model waited minutes in silence. Here every Hub call hf_unlearn makes runs with a
per-request timeout and a few retries with exponential backoff, both configurable through the environment:

- `HF_UNLEARN_HUB_TIMEOUT`: seconds one request may take (connect, read, write), default 30;
- `HF_UNLEARN_HUB_RETRIES`: further tries after a network failure (a timeout, a refused connection), default 2,
  waiting 1 s, 2 s, ... in between. An HTTP error answer (401, 404, ...) is not retried.

Messages hf_unlearn prints or logs never carry a token: [`scrub`] replaces token-shaped strings (`hf_...`) and the
values of `HF_TOKEN` / `HUGGING_FACE_HUB_TOKEN` (an endpoint may echo the request headers in its error body), and
[`install_log_scrubbing`] applies it to every log record of the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Optional, TypeVar

from .modelcard import looks_like_repo

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
_TOKEN_SHAPE = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
OFFLINE_HINT = (
    "if the model is in your Hugging Face cache, set HF_HUB_OFFLINE=1 to load it from there; otherwise check the "
    "network (HF_UNLEARN_HUB_TIMEOUT and HF_UNLEARN_HUB_RETRIES bound each call)"
)


def _env_number(name: str, default: float, cast=float):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        number = cast(value)
    except ValueError:
        raise ValueError(f"`{name}` is {value!r}; give a number.") from None
    if number < 0:
        raise ValueError(f"`{name}` is {value!r}; give a number >= 0.")
    return number


def hub_timeout() -> float:
    return _env_number("HF_UNLEARN_HUB_TIMEOUT", DEFAULT_TIMEOUT_S)


def hub_retries() -> int:
    return int(_env_number("HF_UNLEARN_HUB_RETRIES", DEFAULT_RETRIES, int))


def scrub(text: str, *secrets: Optional[str]) -> str:
    """`text` without token-shaped strings (`hf_...`), the token env values, or `secrets`."""
    values = [s for s in (*secrets, *(os.environ.get(k) for k in TOKEN_ENV)) if s and len(s) >= 4]
    for value in sorted(set(values), key=len, reverse=True):
        text = text.replace(value, "***")
    return _TOKEN_SHAPE.sub("hf_***", text)


class _ScrubbingFactory:
    """A log record factory that scrubs the formatted message of every record (see [`scrub`])."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, *args, **kwargs) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a malformed record is logging's business, not ours)
            return record
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return record


def install_log_scrubbing() -> None:
    """Scrubs every log record of the process (idempotent)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _ScrubbingFactory):
        logging.setLogRecordFactory(_ScrubbingFactory(current))


class _BoundedTransport:
    """An httpx transport that gives every request `timeout` seconds for each phase it left unlimited."""

    def __init__(self, inner, timeout: float):
        self.inner, self.timeout = inner, timeout

    def handle_request(self, request):
        limits = dict(request.extensions.get("timeout") or {})
        for phase in ("connect", "read", "write", "pool"):
            if limits.get(phase) is None:
                limits[phase] = self.timeout
        request.extensions["timeout"] = limits
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *args):
        self.inner.__exit__(*args)


@contextlib.contextmanager
def bounded_hub_session(timeout: Optional[float] = None) -> Iterator[None]:
    """huggingface_hub's shared HTTP client with a `timeout` on every request, inside the block only."""
    from huggingface_hub.utils import _http  # noqa: PLC0415

    timeout = hub_timeout() if timeout is None else timeout
    previous = _http._GLOBAL_CLIENT_FACTORY

    def factory():
        client = previous()
        client.timeout = _http.httpx2.Timeout(timeout)
        # huggingface_hub passes `timeout=None` (no limit) per request in many calls, overriding the client's: the
        # transport fills every unset limit of every request instead.
        client._transport = _BoundedTransport(client._transport, timeout)
        return client

    _http.set_client_factory(factory)
    try:
        yield
    finally:
        _http.set_client_factory(previous)


def _is_network_failure(err: BaseException) -> bool:
    from huggingface_hub.utils import _http  # noqa: PLC0415

    httpx = _http.httpx2
    if isinstance(err, httpx.HTTPStatusError):  # the server answered: retrying does not change its answer
        return False
    return isinstance(err, (httpx.TransportError, httpx.TimeoutException, ConnectionError, TimeoutError))


def with_retries(call: Callable[[], T], retries: Optional[int] = None, base_wait_s: float = 1.0) -> T:
    """`call()` with a bounded session, retried `retries` times after a network failure, waiting 1, 2, 4 s..."""
    retries = hub_retries() if retries is None else retries
    for attempt in range(retries + 1):
        try:
            with bounded_hub_session():
                return call()
        except Exception as err:
            if attempt == retries or not _is_network_failure(err):
                raise
            time.sleep(base_wait_s * 2**attempt)
    raise AssertionError("unreachable")


def check_hub_reachable(model_or_path, argument: str = "model_or_path") -> None:
    """Fails fast, in one line with the `HF_HUB_OFFLINE` hint, when `model_or_path` is a Hub repo id and the Hub
    cannot be reached within the bounds (instead of minutes of silent retries inside the loaders)."""
    from huggingface_hub import HfApi, constants  # noqa: PLC0415

    if not looks_like_repo(model_or_path) or constants.is_offline_mode():
        return

    try:
        with_retries(lambda: HfApi().repo_info(str(model_or_path), timeout=hub_timeout()))
    except Exception as err:  # noqa: BLE001
        if not _is_network_failure(err):
            return  # the Hub answered (a 401/404 is the loader's to explain, with its own message)
        reason = scrub(" ".join(f"{type(err).__name__}: {err}".split()))[:200]
        raise ValueError(
            f"`{argument}` {model_or_path}: the Hub ({constants.ENDPOINT}) could not be reached within "
            f"{hub_timeout():g} s x {hub_retries() + 1} tries ({reason}); {OFFLINE_HINT}."
        ) from None


__all__ = [
    "bounded_hub_session",
    "check_hub_reachable",
    "hub_retries",
    "hub_timeout",
    "install_log_scrubbing",
    "scrub",
    "with_retries",
]
