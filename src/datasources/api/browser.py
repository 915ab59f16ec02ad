"""What a browser may do: the session cookie, the Origin and CSRF checks, the login limiter.

The session cookie is ``HttpOnly`` and ``SameSite=Strict``, and ``Secure`` when the
request came over https (directly, or through a proxy uvicorn trusts) or the operator
says so; over https it takes the ``__Host-`` prefix, which pins it to this host and
path ``/``. It authorises the page's own calls to ``/api/v1`` and nothing else:

- a request that carries ``Authorization`` is judged by its key alone, never the cookie;
- ``Sec-Fetch-Site``, when the browser sends it, must say ``same-origin`` (or ``none``
  for a read the user started);
- a state-changing request (anything but GET, HEAD, OPTIONS) must come with an
  ``Origin`` of this service and the session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from datasources.api.errors import ApiError
from datasources.config import ApiSettings
from datasources.websessions import SignedIn, WebSessions

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "SECURE_COOKIE",
    "LoginLimiter",
    "check_browser_request",
    "clear_session_cookie",
    "is_https",
    "origin_allowed",
    "own_origin",
    "session_token",
    "set_session_cookie",
    "signed_in",
]

COOKIE = "ds_session"
SECURE_COOKIE = "__Host-ds_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_https(request: Request, api: ApiSettings) -> bool:
    """Whether the cookie should be ``Secure`` for this request."""
    if api.cookie_secure is not None:
        return api.cookie_secure
    return request.url.scheme == "https"


def session_token(request: Request) -> str | None:
    """The session token the request's cookie carries (the ``__Host-`` one first)."""
    return request.cookies.get(SECURE_COOKIE) or request.cookies.get(COOKIE)


def set_session_cookie(
    response: Response, request: Request, token: str, *, secure: bool, max_age: int
) -> None:
    """Send the session cookie (and drop the other-named one if the browser has it)."""
    name, other = (SECURE_COOKIE, COOKIE) if secure else (COOKIE, SECURE_COOKIE)
    response.set_cookie(
        name, token, max_age=max_age, path="/", secure=secure, httponly=True, samesite="strict"
    )
    if other in request.cookies:
        response.delete_cookie(
            other, path="/", secure=other == SECURE_COOKIE, httponly=True, samesite="strict"
        )


def clear_session_cookie(response: Response) -> None:
    """Drop the session cookie under both names."""
    for name in (COOKIE, SECURE_COOKIE):
        response.delete_cookie(
            name, path="/", secure=name == SECURE_COOKIE, httponly=True, samesite="strict"
        )


def own_origin(request: Request) -> str:
    """This service's origin as the request reached it: scheme and Host."""
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}".lower()


def origin_allowed(request: Request, api: ApiSettings) -> bool:
    """Whether the request's ``Origin`` is this service (absent or ``null``: no)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return False
    origin = origin.lower().rstrip("/")
    allowed = {own_origin(request)} | {o.lower().rstrip("/") for o in api.public_origins}
    return origin in allowed


async def signed_in(request: Request) -> SignedIn | None:
    """The live session of the request's cookie, or None."""
    sessions: WebSessions = request.app.state.sessions
    return await sessions.resolve(session_token(request))


def check_browser_request(request: Request, session: SignedIn, api: ApiSettings) -> None:
    """Refuse a cookie-authorised request that another site could have made.

    Raises:
        ApiError: 403 ``cross_site_refused`` or ``csrf_failed``.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise ApiError(
            403, "cross_site_refused", "The session cookie only works on this site's own pages."
        )
    if request.method in SAFE_METHODS:
        return
    if site == "none":
        raise ApiError(403, "cross_site_refused", "A change must come from this site's pages.")
    if not origin_allowed(request, api):
        raise ApiError(403, "csrf_failed", "The request's Origin is not this service.")
    if not session.csrf_matches(request.headers.get(CSRF_HEADER)):
        raise ApiError(
            403, "csrf_failed", f"The {CSRF_HEADER} header is missing or not this session's."
        )


class LoginLimiter:
    """Failed sign-ins per user name and per client address, in a sliding window.

    After ``max_failures`` failures for one name, or from one address, within ``window``
    seconds, further attempts are refused until the oldest failure leaves the window.
    Kept in each process, like the API rate limiter: with N workers an attacker gets up
    to N times the attempts, each costing an argon2 verification.
    """

    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    @staticmethod
    def _keys(name: str, address: str | None) -> list[str]:
        keys = [f"n:{name.strip().lower()[:200]}"]
        if address:
            keys.append(f"a:{address}")
        return keys

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, name: str, address: str | None) -> int | None:
        """Seconds to wait before this name or address may try again; None: go ahead."""
        now = time.monotonic()
        waits = []
        for key in self._keys(name, address):
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                waits.append(times[-self.max_failures] + self.window - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, name: str, address: str | None) -> None:
        """Count a failure against the name and the address."""
        now = time.monotonic()
        if len(self._failures) > 100_000:
            for key in list(self._failures):
                self._recent(key, now)
            if len(self._failures) > 100_000:
                self._failures.clear()
        for key in self._keys(name, address):
            times = self._failures.setdefault(key, deque(maxlen=self.max_failures * 4))
            times.append(now)

    def succeeded(self, name: str) -> None:
        """A correct sign-in clears the name's failures (never the address's)."""
        self._failures.pop(self._keys(name, None)[0], None)


def cookie_max_age(expires_at: datetime, now: datetime) -> int:
    """Seconds from ``now`` to ``expires_at``, at least 1."""
    return max(1, int((expires_at - now).total_seconds()))
