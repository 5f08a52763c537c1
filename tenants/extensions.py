"""Hooks through which other apps add to what tenants shows, without tenants importing them.

``billing`` registers its money summary here at start-up, so ``GET /v1/tenant`` can show a
tenant its spend while identity stays independent of billing (docs/architecture.md, "Which app imports which").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tenants.models import Tenant

TenantSection = Callable[[Tenant], dict[str, Any]]
tenant_detail_sections: list[TenantSection] = []


def tenant_detail_section(section: TenantSection) -> TenantSection:
    if section not in tenant_detail_sections:
        tenant_detail_sections.append(section)
    return section
