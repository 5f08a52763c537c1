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


# Panels other apps add to the tenant's dashboard (e.g. ``batches``: its batches and their
# cost so far), each rendered to safe HTML for the tenant; registered at start-up.
DashboardPanel = Callable[[Tenant], str]
dashboard_panels: list[DashboardPanel] = []


def dashboard_panel(panel: DashboardPanel) -> DashboardPanel:
    if panel not in dashboard_panels:
        dashboard_panels.append(panel)
    return panel
