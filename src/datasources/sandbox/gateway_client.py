"""The REST API and channel connections of a Jupyter Enterprise Gateway or Kernel Gateway.

``/api/kernels`` starts, looks up, interrupts, restarts and shuts down kernels;
``/api/kernels/{id}/channels`` is the WebSocket carrying the kernel's messages. ``httpx``
makes the REST calls and ``websockets`` opens the channel, both with the token in an
``Authorization: token …`` header (never in a URL, which gets logged), no redirects and no
proxies from the environment. Errors are translated here, once: a gateway out of reach,
one that refuses the token, one that refuses to start a kernel, and one that fails are
each a :class:`SandboxUnavailableError` (HTTP 503) whose message names the cause and the
setting to check, never the token or the gateway's own words (those go to the log).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from datasources.config import GatewaySettings
from datasources.sandbox.runtime import SandboxUnavailableError

__all__ = ["KERNEL_ID", "GatewayClient", "KernelGone"]

logger = logging.getLogger(__name__)

KERNEL_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
"""What a kernel id may look like (a UUID on every gateway) before it goes in a URL."""


class KernelGone(Exception):
    """The gateway no longer has the kernel (shut down, culled, or its pod is gone)."""


def _kernel_path(kernel_id: str) -> str:
    if not KERNEL_ID.match(kernel_id):
        raise KernelGone(kernel_id[:64])
    return f"/api/kernels/{quote(kernel_id)}"


class GatewayClient:
    """The gateway's REST API and channel connections, errors translated at the boundary.

    Args:
        settings: URL, token, kernelspec and timeouts.
        max_message: The largest WebSocket frame taken; a larger one closes the connection.
    """

    def __init__(self, settings: GatewaySettings, *, max_message: int) -> None:
        self.settings = settings
        self.max_message = max_message
        self._http = httpx.AsyncClient(
            base_url=settings.url,
            headers=self._auth(),
            timeout=settings.request_timeout,
            follow_redirects=False,
            trust_env=False,
        )

    def _auth(self) -> dict[str, str]:
        token = self.settings.token
        return {} if token is None else {"Authorization": f"token {token.get_secret_value()}"}

    async def close(self) -> None:
        await self._http.aclose()

    @contextlib.contextmanager
    def _reaching(self, action: str) -> Iterator[None]:
        """Transport failures as one clear error (the exception's text, which may name the
        URL, goes to the log only)."""
        try:
            yield
        except httpx.TimeoutException:
            logger.warning("The kernel gateway did not answer in time (%s).", action)
            raise SandboxUnavailableError(
                f"The kernel gateway did not answer in time ({action}): code cannot run "
                "right now; try again shortly."
            ) from None
        except (TimeoutError, httpx.TransportError, OSError, WebSocketException) as exc:
            logger.warning("The kernel gateway cannot be reached (%s): %s", action, exc)
            raise SandboxUnavailableError(
                f"The kernel gateway cannot be reached ({action}): code cannot run right now; "
                "try again shortly."
            ) from None

    def _refused(self, status: int, action: str, detail: str) -> SandboxUnavailableError:
        """What an error status from the gateway means, safely worded."""
        logger.warning("The kernel gateway answered %s to %s: %s", status, action, detail[:300])
        if status == 401:
            return SandboxUnavailableError(
                "The kernel gateway refused the service's token (HTTP 401): check "
                "DATASOURCES_GATEWAY_TOKEN."
            )
        if status == 403:
            return SandboxUnavailableError(
                f"The kernel gateway refused to {action} (HTTP 403: not allowed, or at its "
                "kernel limit); the service log says why."
            )
        return SandboxUnavailableError(
            f"The kernel gateway could not {action} (HTTP {status}); the service log says why."
        )

    async def _call(
        self,
        method: str,
        path: str,
        action: str,
        *,
        body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response | None:
        """One REST call; None when the gateway says 404 (no such kernel)."""
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        with self._reaching(action):
            response = await self._http.request(method, path, json=body, **extra)
        if response.status_code == 404:
            return None
        if response.status_code >= 300:
            raise self._refused(response.status_code, action, response.text)
        return response

    async def check(self) -> None:
        """That the gateway answers, takes the token and has the kernelspec."""
        name = self.settings.kernel_name
        found = await self._call("GET", f"/api/kernelspecs/{quote(name)}", "list its kernels")
        if found is None:
            raise SandboxUnavailableError(
                f"The kernel gateway has no kernelspec {name!r} (DATASOURCES_GATEWAY_KERNEL_NAME)."
            )

    async def start_kernel(self, env: Mapping[str, str]) -> str:
        """Start a kernel; its id."""
        body = {"name": self.settings.kernel_name, "env": dict(env)}
        response = await self._call(
            "POST",
            "/api/kernels",
            "start a kernel",
            body=body,
            timeout=self.settings.launch_timeout,
        )
        if response is None:
            raise SandboxUnavailableError(
                f"The kernel gateway has no kernelspec {self.settings.kernel_name!r} "
                "(DATASOURCES_GATEWAY_KERNEL_NAME)."
            )
        kernel_id = _model(response).get("id")
        if not isinstance(kernel_id, str) or not KERNEL_ID.match(kernel_id):
            raise SandboxUnavailableError("The kernel gateway's answer named no kernel.")
        return kernel_id

    async def kernel(self, kernel_id: str) -> dict[str, Any] | None:
        """The kernel's model (``execution_state``, ``last_activity``), None if it is gone."""
        try:
            path = _kernel_path(kernel_id)
        except KernelGone:
            return None
        response = await self._call("GET", path, "look up a kernel")
        return None if response is None else _model(response)

    async def interrupt(self, kernel_id: str) -> bool:
        """Interrupt the kernel; False if it is gone."""
        path = _kernel_path(kernel_id) + "/interrupt"
        return await self._call("POST", path, "interrupt a kernel", body={}) is not None

    async def restart(self, kernel_id: str) -> bool:
        """Restart the kernel (same id, fresh state); False if it is gone."""
        path = _kernel_path(kernel_id) + "/restart"
        timeout = self.settings.launch_timeout
        return (
            await self._call("POST", path, "restart a kernel", body={}, timeout=timeout) is not None
        )

    async def shutdown(self, kernel_id: str) -> None:
        """Shut the kernel down (one already gone is fine)."""
        with contextlib.suppress(KernelGone):
            await self._call("DELETE", _kernel_path(kernel_id), "shut a kernel down")

    async def channels(self, kernel_id: str, session_id: str) -> ClientConnection:
        """A WebSocket to the kernel's channels.

        Raises:
            KernelGone: the gateway has no such kernel.
            SandboxUnavailableError: the gateway cannot be reached or refuses.
        """
        base = self.settings.url.replace("http", "ws", 1)
        url = f"{base}{_kernel_path(kernel_id)}/channels?session_id={quote(session_id)}"
        with self._reaching("connect to a kernel"):
            try:
                return await connect(
                    url,
                    additional_headers=self._auth(),
                    max_size=self.max_message,
                    max_queue=4,  # frames read ahead of the session: each up to max_size
                    open_timeout=self.settings.launch_timeout,
                    proxy=None,
                    compression=None,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 404:
                    raise KernelGone(kernel_id) from None
                body = exc.response.body or b""
                detail = body.decode("utf-8", "replace")
                raise self._refused(status, "connect to a kernel", detail) from None


def _model(response: httpx.Response) -> dict[str, Any]:
    try:
        model = response.json()
    except ValueError:
        raise SandboxUnavailableError("The kernel gateway's answer was not JSON.") from None
    if not isinstance(model, dict):
        raise SandboxUnavailableError("The kernel gateway's answer was not a kernel.")
    return model
