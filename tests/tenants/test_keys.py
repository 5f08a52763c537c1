"""The key format: recognisable offline, checksummed, stored only as a hash."""

from __future__ import annotations

import pytest

from tenants import keys, services
from tenants.models import ApiKey, Tenant


def test_key_format_and_entropy() -> None:
    new = keys.generate()
    assert new.plaintext.startswith("tlw_")
    assert keys.KEY_PATTERN.match(new.plaintext)
    assert keys.parse_key_id(new.plaintext) == new.key_id
    assert keys.SECRET_LENGTH * 5.95 >= 128  # base62 carries log2(62) ≈ 5.95 bits a character
    assert len({keys.generate().plaintext for _ in range(200)}) == 200


def test_checksum_catches_any_single_typo() -> None:
    plaintext = keys.generate().plaintext
    for position in range(len("tlw_"), len(plaintext)):
        original = plaintext[position]
        if original == "_":
            continue
        typo = plaintext[:position] + ("a" if original != "a" else "b") + plaintext[position + 1 :]
        assert keys.parse_key_id(typo) is None, f"typo at {position} not caught"


@pytest.mark.parametrize("candidate", ["", "sk-abc", "tlw_", "tlw_short_key", "Bearer tlw_x"])
def test_malformed_keys_are_rejected_without_lookup(candidate: str) -> None:
    assert keys.parse_key_id(candidate) is None


def test_matches_is_exact() -> None:
    new = keys.generate()
    assert keys.matches(new.plaintext, new.secret_hash)
    assert not keys.matches(new.plaintext + "x", new.secret_hash)


@pytest.mark.django_db
def test_only_the_hash_is_stored(tenant: Tenant) -> None:
    created = services.api_key_create(tenant=tenant, name="ci")
    row = ApiKey.objects.values().get(pk=created.api_key.pk)
    secret = created.plaintext.split("_", 2)[2]
    assert not any(secret in str(value) for value in row.values())
    assert row["secret_hash"] == keys.hash_key(created.plaintext)
    assert created.api_key.display == f"tlw_{created.api_key.key_id}_…{created.plaintext[-4:]}"
    assert secret not in str(created.api_key) and secret not in repr(created.api_key)
