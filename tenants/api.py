"""The management API: a tenant manages its own keys and reads its settings.

Every view needs a key with the ``manage`` scope, and sees only the caller's tenant:
scoping happens once, in ``get_queryset()``, so another tenant's key id answers 404.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q, QuerySet
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ErrorCode, InvalidRequest, NotFound, PermissionDenied
from tenants import selectors, services
from tenants.auth import authenticate_request
from tenants.extensions import tenant_detail_sections
from tenants.models import ApiKey, Tenant
from tenants.selectors import KeyPrincipal
from tenants.serializers import (
    ApiKeyIn,
    ApiKeyOut,
    ApiKeyWithSecretOut,
    RotateIn,
    TenantIn,
    TenantOut,
)

MAX_PAGE = 100


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Bearer tlw_…``; scopes are checked by :class:`RequiresScope`."""

    def authenticate(self, request: Request) -> tuple[None, KeyPrincipal]:
        return None, authenticate_request(request._request, scope=None)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="tollway"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.api.ApiKeyAuthentication"
    name = "TollwayKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "tlw_<key id>_<secret><checksum>"}


class RequiresScope(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.auth
        scope = view.required_scope
        if not isinstance(principal, KeyPrincipal) or not principal.has_scope(scope):
            held = ", ".join(principal.scopes) if isinstance(principal, KeyPrincipal) else "none"
            raise PermissionDenied(
                f"This API key lacks the '{scope}' scope needed here; it has: {held}.",
                code=ErrorCode.INSUFFICIENT_SCOPE,
            )
        return True


class ManageView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [RequiresScope]
    required_scope = "manage"

    @property
    def principal(self) -> KeyPrincipal:
        assert isinstance(self.request.auth, KeyPrincipal)
        return self.request.auth

    def validated(self, serializer_class: type[serializers.Serializer], *, partial: bool = False) -> dict[str, Any]:
        serializer = serializer_class(data=self.request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    def handle_exception(self, exc: Exception) -> Response:
        # Services validate too; their field errors reach the client with the field named.
        if isinstance(exc, DjangoValidationError):
            exc = serializers.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
        return super().handle_exception(exc)


class KeyScopedView(ManageView):
    def get_queryset(self) -> QuerySet[ApiKey]:
        return selectors.api_key_list(tenant_id=self.principal.tenant_pk)

    def get_object(self, key_id: str) -> ApiKey:
        api_key = self.get_queryset().filter(key_id=key_id).first()
        if api_key is None:
            raise NotFound(f"No API key '{key_id}' in this tenant.", param="id")
        return api_key


def page_limit(request: Request) -> int:
    """The ``limit`` query parameter of a list endpoint: 1 to MAX_PAGE, default 20."""
    try:
        limit = int(request.query_params.get("limit", 20))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"Use a whole number from 1 to {MAX_PAGE}.", param="limit")
    return limit


def list_of(name: str, item: serializers.Serializer) -> serializers.Serializer:
    """The schema of an OpenAI-style list: ``{"object": "list", "data": [...], "has_more"}``."""
    return inline_serializer(
        name,
        {"object": serializers.CharField(default="list"), "data": item, "has_more": serializers.BooleanField()},
    )


class KeyListView(KeyScopedView):
    @extend_schema(
        summary="List the tenant's API keys",
        parameters=[
            OpenApiParameter("limit", int, description=f"1 to {MAX_PAGE}, default 20"),
            OpenApiParameter("after", str, description="A key id: list the keys created before it"),
        ],
        responses=list_of("ApiKeyList", ApiKeyOut(many=True)),
    )
    def get(self, request: Request) -> Response:
        limit = page_limit(request)
        keys = self.get_queryset()
        after = request.query_params.get("after")
        if after:
            cursor = self.get_object(after)
            keys = keys.filter(Q(created_at__lt=cursor.created_at) | Q(created_at=cursor.created_at, pk__lt=cursor.pk))
        page = list(keys[: limit + 1])
        return Response(
            {"object": "list", "data": ApiKeyOut(page[:limit], many=True).data, "has_more": len(page) > limit}
        )

    @extend_schema(summary="Create an API key", request=ApiKeyIn, responses={201: ApiKeyWithSecretOut})
    def post(self, request: Request) -> Response:
        fields = self.validated(ApiKeyIn)
        tenant = Tenant.objects.get(pk=self.principal.tenant_pk)
        created = services.api_key_create(tenant=tenant, **fields)
        return Response(ApiKeyWithSecretOut(created.api_key, context={"secret": created.plaintext}).data, status=201)


class KeyDetailView(KeyScopedView):
    @extend_schema(summary="Show an API key", responses=ApiKeyOut)
    def get(self, request: Request, key_id: str) -> Response:
        return Response(ApiKeyOut(self.get_object(key_id)).data)

    @extend_schema(summary="Change an API key", request=ApiKeyIn, responses=ApiKeyOut)
    def patch(self, request: Request, key_id: str) -> Response:
        api_key = self.get_object(key_id)
        fields = self.validated(ApiKeyIn, partial=True)
        return Response(ApiKeyOut(services.api_key_update(api_key=api_key, **fields)).data)

    @extend_schema(summary="Revoke an API key (idempotent)", responses=ApiKeyOut)
    def delete(self, request: Request, key_id: str) -> Response:
        return Response(ApiKeyOut(services.api_key_revoke(api_key=self.get_object(key_id))).data)


class KeyRotateView(KeyScopedView):
    @extend_schema(summary="Rotate an API key's secret", request=RotateIn, responses=ApiKeyWithSecretOut)
    def post(self, request: Request, key_id: str) -> Response:
        api_key = self.get_object(key_id)
        grace = timedelta(seconds=self.validated(RotateIn)["grace_period_seconds"])
        rotated = services.api_key_rotate(api_key=api_key, grace=grace)
        return Response(ApiKeyWithSecretOut(rotated.api_key, context={"secret": rotated.plaintext}).data)


class TenantView(ManageView):
    def get_object(self) -> Tenant:
        return Tenant.objects.get(pk=self.principal.tenant_pk)

    def render(self, tenant: Tenant) -> dict[str, Any]:
        data = dict(TenantOut(tenant).data)
        for section in tenant_detail_sections:
            data.update(section(tenant))
        return data

    @extend_schema(summary="Show the caller's tenant, with its spend and limits", responses=TenantOut)
    def get(self, request: Request) -> Response:
        return Response(self.render(self.get_object()))

    @extend_schema(summary="Change the tenant's display name or billing email", request=TenantIn, responses=TenantOut)
    def patch(self, request: Request) -> Response:
        fields = self.validated(TenantIn, partial=True)
        return Response(self.render(services.tenant_update(tenant=self.get_object(), **fields)))
