from django.urls import path

from billing import api

urlpatterns = [
    path("usage", api.UsageView.as_view(), name="usage"),
    path("invoices", api.InvoiceListView.as_view(), name="invoices"),
    path("invoices/<str:number>.pdf", api.InvoicePdfView.as_view(), name="invoice-pdf"),
    path("invoices/<str:number>.csv", api.InvoiceCsvView.as_view(), name="invoice-csv"),
    path("invoices/<str:number>", api.InvoiceDetailView.as_view(), name="invoice-detail"),
]
