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

import hashlib
import math
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from datasources.api.errors import ApiError
from datasources.config import ApiSettings
from datasources.shared import SharedState
from datasources.shared.ratelimit import Rate, RateLimiter
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
    """Failed sign-ins per user name and per client address, in token buckets.

    Each name and each address has a bucket of ``max_failures`` that a failure spends and
    that refills over ``window`` seconds: after ``max_failures`` failures for one name, or
    from one address, within the window, further attempts are refused until a token is
    back (``window / max_failures`` seconds at most). The buckets live in ``limiter``, the
    shared rate-limit interface: in this process, or in Redis when
    ``DATASOURCES_REDIS_URL`` is set, so that replicas and workers count together and an
    attacker does not get N times the attempts from N replicas.
    """

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    @classmethod
    def from_settings(cls, shared: SharedState, api: ApiSettings) -> LoginLimiter:
        """The login limiter of ``api``'s settings, on ``shared``'s rate-limit backend."""
        rate = Rate.every(api.login_max_failures, seconds=api.login_window_seconds)
        return cls(shared.rate_limiter(rate, name="login"))

    @staticmethod
    def _keys(name: str, address: str | None) -> list[str]:
        # Hashed: a name someone typed (or a password typed into the name field) is
        # never a Redis key in clear.
        keys = ["n:" + _digest(name.strip().lower()[:200])]
        if address:
            keys.append("a:" + _digest(address))
        return keys

    async def retry_after(self, name: str, address: str | None) -> int | None:
        """Seconds to wait before this name or address may try again; None: go ahead.

        Going ahead spends the name's token now, before the (slow) password check: a
        check here and a spend after it would let guesses sent at once all be verified.
        A correct password gives it back (:meth:`succeeded`). The address's token is
        spent by :meth:`failed` only, so that sign-ins from one shared address that
        succeed do not count against it.
        """
        name_key, *address_keys = self._keys(name, address)
        waits = [w for k in address_keys if (w := await self._limiter.peek(k))]
        if not waits and (w := await self._limiter.take(name_key)):
            waits.append(w)
        return max(1, math.ceil(max(waits))) if waits else None

    async def failed(self, name: str, address: str | None) -> None:
        """Count a failure against the address (the name's token went in retry_after)."""
        for key in self._keys(name, address)[1:]:
            await self._limiter.take(key)

    async def succeeded(self, name: str) -> None:
        """A correct sign-in clears the name's failures (never the address's)."""
        await self._limiter.reset(self._keys(name, None)[0])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def cookie_max_age(expires_at: datetime, now: datetime) -> int:
    """Seconds from ``now`` to ``expires_at``, at least 1."""
    return max(1, int((expires_at - now).total_seconds()))
