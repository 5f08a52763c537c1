"""Provider credentials at rest: encrypted with Fernet, never shown again.

A provider names an environment variable (``api_key_env``), or an admin pastes the
credential, which is stored as a Fernet token. The keys come from
``TOLLWAY_SECRETS_KEY`` (comma-separated, newest first: MultiFernet decrypts with any and
encrypts with the first, so a key can be rotated). With DEBUG on and no key, a dev key is
derived from SECRET_KEY so ``make run`` works; with DEBUG off there is then no key, and
storing a credential fails with a message that names the variable.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)


def _fernet() -> MultiFernet:
    keys: tuple[str, ...] = tuple(settings.TOLLWAY_SECRETS_KEYS)
    if not keys and settings.DEBUG:
        keys = (base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest()).decode(),)
    return _multi(keys)


@functools.lru_cache(maxsize=4)
def _multi(keys: tuple[str, ...]) -> MultiFernet:
    """Built once per key set: a stored credential is decrypted on every call."""
    if not keys:
        raise ImproperlyConfigured(
            "TOLLWAY_SECRETS_KEY is not set, so provider credentials cannot be encrypted. Generate one with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`, "
            "or name an environment variable in api_key_env instead."
        )
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except ValueError:
        raise ImproperlyConfigured("TOLLWAY_SECRETS_KEY must be url-safe base64 Fernet keys.") from None


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str | None:
    """The credential, or ``None`` if no key can decrypt it (logged, never raised to a client)."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except (InvalidToken, ImproperlyConfigured) as exc:
        log.error("a stored provider credential cannot be decrypted: %s", type(exc).__name__)
        return None


def resolve(*, api_key_env: str, api_key_encrypted: str) -> str | None:
    """The secret to send upstream: the environment variable wins over a stored credential.

    ``""`` means the provider needs none; ``None`` means it needs one that is missing.
    """
    if api_key_env:
        return os.environ.get(api_key_env) or None
    if api_key_encrypted:
        return decrypt(api_key_encrypted)
    return ""
