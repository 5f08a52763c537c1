"""The Batch API's panel on the tenant dashboard: recent batches, their state and cost so far."""

from __future__ import annotations

from django.template.loader import render_to_string

from batches.models import Batch
from tenants.models import Tenant

PANEL_BATCHES = 10


def batches_panel(tenant: Tenant) -> str:
    """Nothing for a tenant that never made a batch, so the dashboard stays as it was."""
    batches = list(Batch.objects.filter(tenant=tenant).order_by("-created_at", "-pk")[:PANEL_BATCHES])
    if not batches:
        return ""
    return render_to_string("batches/dashboard_panel.html", {"batches": batches})
