"""Secrets: encryption at rest, masking, key loading and rotation, and log redaction.

* :class:`CredentialManager` encrypts each secret field of a source's config separately
  with ``cryptography``'s :class:`~cryptography.fernet.MultiFernet` (the first key
  encrypts, every key decrypts), so non-secret fields stay plain and queryable.
* It fails closed: without a key, storing a secret is refused (:class:`MissingKeyError`);
  a token no key can read raises :class:`CredentialsUnreadableError` and nothing is
  overwritten.
* :func:`install_log_redaction` makes every log record in the process pass through
  :func:`redact`, which removes every secret this process has handled and the common
  secret shapes (``AccountKey=…``, ``sig=…``, ``password=…``, ``scheme://user:pass@``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from datasources.errors import (
    ConfigurationError,
    CredentialsUnreadableError,
    MissingKeyError,
)

__all__ = [
    "MASK",
    "CredentialManager",
    "RedactingFilter",
    "generate_key",
    "install_log_redaction",
    "load_key_file",
    "mask_config_for_display",
    "redact",
    "register_secret",
    "write_key_file",
]

logger = logging.getLogger(__name__)

MASK = "********"
"""What a secret looks like on the way out."""

_MIN_SECRET_LEN = 4  # shorter values would redact ordinary words out of every log line

# Config keys whose values are treated as secret when displayed, whatever the connector says.
_SECRET_KEY_RE = re.compile(
    r"(password|passwd|secret|token|account_key|connection_string|dsn|sas|credential|api_key)",
    re.IGNORECASE,
)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # scheme://user:password@host
    (
        re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?P<post>@)"),
        r"\g<pre>***\g<post>",
    ),
    # Azure connection strings and SAS query strings
    (re.compile(r"(?P<pre>AccountKey=)[^;\s\"']+", re.IGNORECASE), r"\g<pre>***"),
    (re.compile(r"(?P<pre>SharedAccessSignature=)[^;\s\"']+", re.IGNORECASE), r"\g<pre>***"),
    (re.compile(r"(?P<pre>[?&;]sig=)[^&;\s\"']+", re.IGNORECASE), r"\g<pre>***"),
    # key=value, key: value and "key": "value" shapes
    (
        re.compile(
            r"(?P<pre>\b(?:password|passwd|pwd|client_secret|account_key|sas_token|api_key|secret)"
            r"[\"']?\s*[=:]\s*[\"']?)[^\"'&;\s,}]+",
            re.IGNORECASE,
        ),
        r"\g<pre>***",
    ),
]


_MARKERS: list[tuple[str, ...]] = [
    ("://",),
    ("accountkey=",),
    ("sharedaccesssignature=",),
    ("sig=",),
    ("password", "passwd", "pwd", "client_secret", "account_key", "sas_token", "api_key", "secret"),
]
"""For each of :data:`_PATTERNS`, substrings (lower case) without which it cannot match."""


_WHOLE_TOKEN_BELOW = 16
"""Secrets shorter than this are redacted only where they stand as a whole token."""


def _token_pattern(secret: str) -> re.Pattern[str] | None:
    """How a short secret is found: not inside a longer word (``sales`` in ``sales_2026``).

    A short password can be an ordinary word; replacing it inside every identifier that
    contains it garbles messages (``relation "***_2026"``) and, worse, tells a reader
    which word the password is. Long secrets (keys, tokens) cannot collide with words by
    chance and are removed wherever they occur.
    """
    if len(secret) >= _WHOLE_TOKEN_BELOW:
        return None
    before = r"(?<![A-Za-z0-9_])" if secret[0].isalnum() or secret[0] == "_" else ""
    after = r"(?![A-Za-z0-9_])" if secret[-1].isalnum() or secret[-1] == "_" else ""
    return re.compile(before + re.escape(secret) + after)


class _SecretRegistry:
    """Plain-text secrets this process has seen, so logs can scrub them verbatim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._ordered: tuple[tuple[str, re.Pattern[str] | None], ...] = ()

    def add(self, value: str) -> None:
        if len(value) < _MIN_SECRET_LEN or value in self._values:
            return
        with self._lock:
            self._values.add(value)
            # Longest first, so a secret that contains another is replaced whole.
            self._ordered = tuple(
                (secret, _token_pattern(secret))
                for secret in sorted(self._values, key=len, reverse=True)
            )

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def values(self) -> tuple[tuple[str, re.Pattern[str] | None], ...]:
        return self._ordered


_SECRETS = _SecretRegistry()


def register_secret(value: str | None) -> None:
    """Remember a secret value so :func:`redact` removes it from any text."""
    if value:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Remove every known secret value and every common secret shape from ``text``."""
    for secret, token in _SECRETS.values():
        if secret in text:
            text = text.replace(secret, "***") if token is None else token.sub("***", text)
    # Each shape needs a marker a plain substring test finds far faster than the regex
    # scan (a log line on every request pays this).
    lowered = text.lower()
    for (pattern, replacement), markers in zip(_PATTERNS, _MARKERS, strict=True):
        if any(marker in lowered for marker in markers):
            text = pattern.sub(replacement, text)
    return text


def mask_config_for_display(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` safe to show: secret-looking keys masked, known secrets redacted."""
    shown: dict[str, Any] = {}
    for key, value in config.items():
        if _SECRET_KEY_RE.search(key) and value not in (None, "", False, True):
            shown[key] = MASK
        elif isinstance(value, str):
            shown[key] = MASK if value in _SECRETS else redact(value)
        else:
            shown[key] = value
    return shown


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string must not lose the record
        message = f"{record.msg!s} {record.args!r}"
    record.msg = redact(message)
    record.args = None
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redact(text)
        # Handlers that render exc_info themselves (rich, with locals) would bypass us.
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)).keys()
    | {"message", "asctime", "msg"}
) - {"exc_text", "stack_info"}


class RedactingFilter(logging.Filter):
    """A handler filter that redacts the message, exception text and string extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        for key, value in list(vars(record).items()):
            # The standard attributes are the logger's own (names, paths, levels); only
            # extras passed with ``extra=`` can carry someone's text.
            if isinstance(value, str) and key not in _STANDARD_ATTRIBUTES:
                setattr(record, key, redact(value))
        return True


_install_lock = threading.Lock()
_installed = False


def install_log_redaction() -> None:
    """Make every log record created in this process redacted at creation. Idempotent."""
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


def generate_key() -> str:
    """A new random Fernet key (url-safe base64, 32 bytes)."""
    return Fernet.generate_key().decode("ascii")


def load_key_file(path: Path, *, create: bool) -> list[str]:
    """Read keys (newest first, one a line, ``#`` comments) from ``path``.

    With ``create``, a missing file is created with mode 0600 holding one new key.
    """
    if not path.exists():
        if not create:
            return []
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = generate_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return load_key_file(path, create=False)
        with os.fdopen(fd, "w") as fh:
            fh.write("# datasources encryption keys, newest first. Back this file up.\n")
            fh.write(key + "\n")
        logger.warning(
            "Created a new encryption key file at %s (mode 0600). Back it up: "
            "without it the stored secrets cannot be read.",
            path,
        )
        return [key]
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning(
            "Key file %s is readable by other users (mode %o); chmod 600 it.", path, mode
        )
    keys = [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return keys


class CredentialManager:
    """Encrypts, decrypts, masks and rotates the secret fields of source configs.

    Args:
        keys: Fernet keys, newest first; the first encrypts, all decrypt. ``None`` or
            empty means no key: reading plain configs works, storing a secret does not.
    """

    def __init__(
        self,
        keys: Sequence[str | bytes] | None = None,
        *,
        key_file: Path | None = None,
        create_key_file: bool = False,
    ) -> None:
        self._key_file = key_file
        self._create_key_file = create_key_file
        self._fernet: MultiFernet | None = None
        self._key_count = 0
        self._file_seen = self._file_identity()
        self._set_keys(keys or ())
        install_log_redaction()

    def _file_identity(self) -> tuple[int, int, int] | None:
        if self._key_file is None:
            return None
        try:
            info = self._key_file.stat()
        except OSError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def _reload_if_changed(self) -> bool:
        """Read the key file again if it appeared or changed since it was read; whether so.

        Another process (the CLI beside a running service) may create the key file or
        rotate a key into it; a miss re-checks the file instead of failing until restart.
        """
        seen = self._file_identity()
        if seen is None or seen == self._file_seen:
            return False
        self._file_seen = seen
        self._set_keys(load_key_file(self._key_file, create=False))  # type: ignore[arg-type]
        logger.info("Encryption keys re-read from the key file (it changed).")
        return True

    def _set_keys(self, keys: Sequence[str | bytes]) -> None:
        fernets: list[Fernet] = []
        for index, key in enumerate(keys):
            raw = (key.encode("ascii") if isinstance(key, str) else key).strip()
            try:
                fernets.append(Fernet(raw))
            except (ValueError, TypeError):
                raise ConfigurationError(
                    f"Encryption key #{index + 1} is not a valid Fernet key "
                    "(generate one with 'datasources secrets generate-key')."
                ) from None
            register_secret(raw.decode("ascii", "replace"))
        self._fernet = MultiFernet(fernets) if fernets else None
        self._key_count = len(fernets)

    @classmethod
    def from_key_file(cls, path: Path, *, create: bool) -> CredentialManager:
        """Keys from a key file; with ``create``, the file is made when a secret is first stored."""
        return cls(load_key_file(path, create=False), key_file=path, create_key_file=create)

    @classmethod
    def ephemeral(cls) -> CredentialManager:
        """A manager with a fresh in-memory key, for registries that never persist."""
        return cls([generate_key()])

    def __repr__(self) -> str:
        return f"CredentialManager(keys={self._key_count})"

    @property
    def has_key(self) -> bool:
        """Whether secrets can be encrypted."""
        return self._fernet is not None

    @property
    def key_count(self) -> int:
        """How many keys are configured (the first encrypts)."""
        return self._key_count

    def _require(self) -> MultiFernet:
        if self._fernet is None:
            self._reload_if_changed()
        if self._fernet is None and self._key_file is not None and self._create_key_file:
            self._set_keys(load_key_file(self._key_file, create=True))
            self._file_seen = self._file_identity()
        if self._fernet is None:
            raise MissingKeyError()
        return self._fernet

    def encrypt(self, plaintext: str) -> str:
        """Encrypt one secret value to a Fernet token (text)."""
        register_secret(plaintext)
        return self._require().encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str, *, field: str | None = None) -> str:
        """Decrypt one token; :class:`CredentialsUnreadableError` if no key can."""
        if self._fernet is None:
            self._reload_if_changed()
        fernet = self._fernet
        if fernet is None:
            raise MissingKeyError(
                "A stored secret needs an encryption key, but none is configured "
                "(set DATASOURCES_SECRET_KEYS or restore the key file)."
            )
        try:
            value = fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            if self._reload_if_changed() and self._fernet is not None:
                return self.decrypt(token, field=field)
            raise CredentialsUnreadableError(details={"field": field} if field else None) from None
        register_secret(value)
        return value

    def encrypt_secrets(self, values: Mapping[str, str]) -> dict[str, str]:
        """Encrypt each value; an empty mapping needs no key."""
        if not values:
            return {}
        return {name: self.encrypt(value) for name, value in values.items()}

    def decrypt_secrets(self, tokens: Mapping[str, str]) -> dict[str, str]:
        """Decrypt each token, naming the field that fails."""
        return {name: self.decrypt(token, field=name) for name, token in tokens.items()}

    def rotate_token(self, token: str) -> str:
        """Re-encrypt ``token`` under the newest key (already-newest tokens are re-issued)."""
        fernet = self._require()
        try:
            return fernet.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, ValueError):
            raise CredentialsUnreadableError() from None

    @staticmethod
    def split_secrets(
        config: Mapping[str, Any], secret_fields: Iterable[str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Split a config into (plain fields, secret fields with a non-empty value)."""
        secret_names = set(secret_fields)
        plain: dict[str, Any] = {}
        secrets: dict[str, str] = {}
        for key, value in config.items():
            if key in secret_names:
                if value is None or value == "":
                    continue
                secrets[key] = _secret_text(value)
            else:
                plain[key] = value
        return plain, secrets

    @staticmethod
    def sanitize(
        config: Mapping[str, Any], secret_fields: Iterable[str], stored_secrets: Iterable[str] = ()
    ) -> dict[str, Any]:
        """A copy of ``config`` with every secret field (present or stored) masked."""
        secret_names = set(secret_fields)
        shown = {
            k: (MASK if k in secret_names and v not in (None, "") else v) for k, v in config.items()
        }
        for name in stored_secrets:
            shown[name] = MASK
        return shown


def _secret_text(value: Any) -> str:
    getter = getattr(value, "get_secret_value", None)
    if callable(getter):
        return str(getter())
    if not isinstance(value, str):
        raise ConfigurationError("Secret fields must be text.")
    return value


def write_key_file(path: Path, keys: Sequence[str]) -> None:
    """Replace the key file atomically (mode 0600), newest key first."""
    for key in keys:
        Fernet(key.encode("ascii"))  # refuse to write a key that could not be loaded
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("# datasources encryption keys, newest first. Back this file up.\n")
            fh.writelines(key + "\n" for key in keys)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
