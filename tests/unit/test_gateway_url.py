"""The gateway's URL carries no credentials: the token has a setting of its own.

Found by review: the URL pattern refused ``user:password@`` but took a query or a
fragment, so Jupyter's usual ``…/?token=…`` was accepted — and the URL is logged when the
service starts (and named by transport errors), with the token in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from datasources.cli import app
from datasources.config import Settings

CANARY = "hunter2-canary"


@pytest.mark.parametrize(
    "url",
    [
        f"http://gw:8888/?token={CANARY}",
        f"http://gw:8888?token={CANARY}",
        f"http://gw:8888/base#{CANARY}",
        f"http://u:{CANARY}@gw:8888",
    ],
)
def test_a_gateway_url_with_credentials_is_refused_without_repeating_them(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(ValidationError):
        Settings(home=tmp_path, gateway_url=url)
    env = {"DATASOURCES_GATEWAY_URL": url, "DATASOURCES_SANDBOX": "gateway"}
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "sources", "list"], env=env)
    assert result.exit_code == 2 and "gateway_url" in result.output
    assert CANARY not in result.output


@pytest.mark.parametrize("url", ["http://gw:8888", "https://gw.example.com/eg/", "http://10.0.0.1"])
def test_plain_gateway_urls_are_taken(tmp_path: Path, url: str) -> None:
    settings = Settings(home=tmp_path, gateway_url=url)
    assert settings.gateway is not None and settings.gateway.url == url.rstrip("/")
