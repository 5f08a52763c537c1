from django.urls import path

from tenants import api

urlpatterns = [
    path("keys", api.KeyListView.as_view(), name="keys"),
    path("keys/<str:key_id>", api.KeyDetailView.as_view(), name="key-detail"),
    path("keys/<str:key_id>/rotate", api.KeyRotateView.as_view(), name="key-rotate"),
    path("tenant", api.TenantView.as_view(), name="tenant"),
]
