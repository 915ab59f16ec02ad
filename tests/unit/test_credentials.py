"""Credentials: encryption that fails closed, masking, key files, rotation, log redaction."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from datasources.credentials import (
    MASK,
    CredentialManager,
    RedactingFilter,
    generate_key,
    load_key_file,
    mask_config_for_display,
    redact,
    register_secret,
    write_key_file,
)
from datasources.errors import ConfigurationError, CredentialsUnreadableError, MissingKeyError
from tests.conftest import logged_text


def test_round_trip_and_per_field_tokens(canary: str) -> None:
    manager = CredentialManager([generate_key()])
    tokens = manager.encrypt_secrets({"password": canary, "token": "t0ken-value"})
    assert set(tokens) == {"password", "token"}
    assert canary not in str(tokens)
    assert manager.decrypt_secrets(tokens) == {"password": canary, "token": "t0ken-value"}
    assert canary not in repr(manager)


def test_no_key_refuses_to_store_secrets(canary: str) -> None:
    manager = CredentialManager()
    assert not manager.has_key
    assert manager.encrypt_secrets({}) == {}
    with pytest.raises(MissingKeyError) as info:
        manager.encrypt(canary)
    assert canary not in info.value.message
    with pytest.raises(MissingKeyError):
        manager.decrypt("gAAAA")


def test_wrong_key_is_unreadable_not_garbage(canary: str) -> None:
    token = CredentialManager([generate_key()]).encrypt(canary)
    other = CredentialManager([generate_key()])
    with pytest.raises(CredentialsUnreadableError) as info:
        other.decrypt(token, field="password")
    assert info.value.details == {"field": "password"}
    with pytest.raises(CredentialsUnreadableError):
        other.decrypt("not-a-token")


def test_rotation_with_multifernet(canary: str) -> None:
    old, new = generate_key(), generate_key()
    token = CredentialManager([old]).encrypt(canary)
    both = CredentialManager([new, old])
    rotated = both.rotate_token(token)
    assert CredentialManager([new]).decrypt(rotated) == canary
    with pytest.raises(CredentialsUnreadableError):
        CredentialManager([old]).decrypt(rotated)
    with pytest.raises(CredentialsUnreadableError):
        CredentialManager([generate_key()]).rotate_token(token)


def test_invalid_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        CredentialManager(["not-a-fernet-key"])
    assert "not-a-fernet-key" not in info.value.message
    assert "#1" in info.value.message


def test_split_and_sanitize() -> None:
    plain, secrets = CredentialManager.split_secrets(
        {"host": "h", "password": "pw-123", "token": ""}, {"password", "token"}
    )
    assert plain == {"host": "h"} and secrets == {"password": "pw-123"}
    shown = CredentialManager.sanitize({"host": "h", "password": "pw"}, {"password"}, ["token"])
    assert shown == {"host": "h", "password": MASK, "token": MASK}


def test_mask_config_for_display(canary: str) -> None:
    register_secret(canary)
    shown = mask_config_for_display(
        {
            "password": "x",
            "host": "h",
            "note": f"uses {canary}",
            "dsn": "postgresql://u:p@h/db",
            "n": 3,
        }
    )
    assert shown["password"] == MASK and shown["dsn"] == MASK
    assert canary not in str(shown) and shown["host"] == "h" and shown["n"] == 3


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0a2V5PT0=;",
            "c2VjcmV0a2V5PT0=",
        ),
        ("BlobEndpoint=x;SharedAccessSignature=sv=2020&sig=abcDEF%2B123", "abcDEF%2B123"),
        ("https://a.blob.core.windows.net/c?sv=2020&se=2030&sp=r&sig=S1gn4ture%3D", "S1gn4ture%3D"),
        ("connecting with password=hunter2x and more", "hunter2x"),
        ('{"password": "js0n-secret"}', "js0n-secret"),
        ("client_secret: cs-value-9", "cs-value-9"),
        ("postgresql://user:pa55word@db.example:5432/x", "pa55word"),
        ("postgres://u:p%40ss@h/db", "p%40ss"),
    ],
)
def test_redact_common_shapes(text: str, leak: str) -> None:
    assert leak not in redact(text)


def test_every_log_record_is_redacted(all_logs: pytest.LogCaptureFixture, canary: str) -> None:
    manager = CredentialManager([generate_key()])
    manager.encrypt(canary)  # the manager now knows the value
    log = logging.getLogger("some.library")
    log.warning("connecting with %s", canary)
    log.info("dsn=postgresql://bob:%s@host/db", "pw-in-url")
    try:
        raise RuntimeError(f"driver said: bad password {canary}")
    except RuntimeError:
        log.exception("failed")
    log.error("extra", extra={"detail": canary})
    text = logged_text(all_logs)
    assert canary not in text
    assert "pw-in-url" not in text
    assert "driver said" in text  # the record survives, only the secret goes
    for record in all_logs.records:
        assert canary not in record.getMessage()
        assert canary not in (record.exc_text or "")


def test_redacting_filter_covers_extras(canary: str) -> None:
    register_secret(canary)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m %s", (canary,), None)
    record.__dict__["detail"] = f"value {canary}"  # an extra= field of the record
    assert RedactingFilter().filter(record)
    assert canary not in record.getMessage() and canary not in record.__dict__["detail"]


def test_key_file_created_private_once(tmp_path: Path, all_logs: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "home" / "secret.key"
    assert load_key_file(path, create=False) == []
    keys = load_key_file(path, create=True)
    assert len(keys) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "Created a new encryption key file" in logged_text(all_logs)
    assert keys[0] not in logged_text(all_logs)
    assert load_key_file(path, create=True) == keys


def test_write_key_file(tmp_path: Path, all_logs: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "k"
    a, b = generate_key(), generate_key()
    write_key_file(path, [a, b])
    assert load_key_file(path, create=False) == [a, b]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        write_key_file(path, ["bogus"])
    assert load_key_file(path, create=False) == [a, b]
    path.chmod(0o644)
    load_key_file(path, create=False)
    assert "readable by other users" in logged_text(all_logs)


def test_key_file_is_created_only_when_a_secret_is_stored(tmp_path: Path, canary: str) -> None:
    path = tmp_path / "home" / "secret.key"
    manager = CredentialManager.from_key_file(path, create=True)
    assert manager.encrypt_secrets({}) == {}
    assert not path.exists()
    token = manager.encrypt(canary)
    assert path.exists()
    assert CredentialManager.from_key_file(path, create=False).decrypt(token) == canary
    locked = CredentialManager.from_key_file(tmp_path / "other.key", create=False)
    with pytest.raises(MissingKeyError):
        locked.encrypt(canary)
    assert not (tmp_path / "other.key").exists()


def test_short_secrets_are_redacted_as_tokens_not_inside_words() -> None:
    """A password that is also a word must not garble identifiers that contain it."""
    from datasources.credentials import register_secret

    register_secret("sales")
    register_secret("wrong")
    assert redact('relation "sales_2026" does not exist') == 'relation "sales_2026" does not exist'
    assert redact("source wrongpw failed") == "source wrongpw failed"
    assert redact("password 'sales' was rejected") == "password '***' was rejected"
    assert redact("postgresql://u:sales@db/x") == "postgresql://u:***@db/x"
    assert redact("sales") == "***" and redact("wrong, sales.") == "***, ***."
    # Long secrets (keys, tokens) go wherever they appear, even glued to other text.
    token = "tk" + "9f" * 12
    register_secret(token)
    assert token not in redact(f"x{token}y") and redact(f"x{token}y") == "x***y"


def test_a_key_file_made_or_rotated_by_another_process_is_picked_up(tmp_path: Path) -> None:
    """The running service sees the key file the CLI created or rotated after it started."""
    from datasources.credentials import CredentialManager, generate_key, load_key_file

    path = tmp_path / "secret.key"
    service = CredentialManager.from_key_file(path, create=False)  # started before the file
    cli = CredentialManager.from_key_file(path, create=True)
    token = cli.encrypt("pw-one")
    assert service.decrypt(token) == "pw-one"

    # The CLI rotates a new key in front (as 'secrets rotate --new-key' does).
    keys = load_key_file(path, create=False)
    path.write_text("\n".join([generate_key(), *keys]) + "\n")
    rotated = CredentialManager.from_key_file(path, create=False).encrypt("pw-two")
    assert service.decrypt(rotated) == "pw-two"
    assert service.encrypt("x")  # and encrypts with what it now has
