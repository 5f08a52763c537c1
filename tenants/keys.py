"""Tollway API key format: recognisable offline, stored only as a hash.

A key reads ``tlw_<key id>_<secret><checksum>``:

* ``tlw_`` is the product prefix, so secret scanners can find leaked keys;
* the key id (12 base62 characters) is public and names the key in logs and the admin;
* the secret is 32 base62 characters, about 190 bits of entropy;
* the checksum is the CRC32 of everything before it, as 6 base62 characters, so a
  scanner (or Tollway itself) can reject a mistyped or made-up key without a lookup.

Only the SHA-256 of the whole key is stored; it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

PREFIX = "tlw_"
KEY_ID_LENGTH = 12
SECRET_LENGTH = 32
CHECKSUM_LENGTH = 6
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

KEY_PATTERN = re.compile(
    rf"^{PREFIX}(?P<key_id>[0-9A-Za-z]{{{KEY_ID_LENGTH}}})_"
    rf"(?P<secret>[0-9A-Za-z]{{{SECRET_LENGTH}}})(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$"
)


@dataclass(frozen=True)
class NewKey:
    key_id: str
    plaintext: str
    secret_hash: str
    last4: str


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


def checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def generate(key_id: str | None = None) -> NewKey:
    """A new key; with ``key_id``, a new secret for that key (a rotation)."""
    key_id = key_id or _random(KEY_ID_LENGTH)
    body = f"{PREFIX}{key_id}_{_random(SECRET_LENGTH)}"
    plaintext = body + checksum(body)
    return NewKey(key_id=key_id, plaintext=plaintext, secret_hash=hash_key(plaintext), last4=plaintext[-4:])


def parse_key_id(plaintext: str) -> str | None:
    """The key id of a well-formed key with a valid checksum, else ``None``."""
    match = KEY_PATTERN.match(plaintext)
    if match is None:
        return None
    body = plaintext[:-CHECKSUM_LENGTH]
    if not hmac.compare_digest(checksum(body), match["checksum"]):
        return None
    return match["key_id"]


def matches(plaintext: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_key(plaintext), secret_hash)


def display(key_id: str, last4: str) -> str:
    """How a key is shown after creation: its prefix and last four characters."""
    return f"{PREFIX}{key_id}_…{last4}"
