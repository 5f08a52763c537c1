from django.urls import path

from billing import api

urlpatterns = [
    path("usage", api.UsageView.as_view(), name="usage"),
    path("invoices", api.InvoiceListView.as_view(), name="invoices"),
    path("invoices/<str:number>.pdf", api.InvoicePdfView.as_view(), name="invoice-pdf"),
    path("invoices/<str:number>.csv", api.InvoiceCsvView.as_view(), name="invoice-csv"),
    path("invoices/<str:number>/status", api.InvoiceStatusView.as_view(), name="invoice-status"),
    path("invoices/<str:number>/credit_notes", api.InvoiceCreditNotesView.as_view(), name="invoice-credit-notes"),
    path("invoices/<str:number>", api.InvoiceDetailView.as_view(), name="invoice-detail"),
    path("credit_notes", api.CreditNoteListView.as_view(), name="credit-notes"),
    path("credit_notes/<str:number>.pdf", api.CreditNotePdfView.as_view(), name="credit-note-pdf"),
    path("credit_notes/<str:number>.csv", api.CreditNoteCsvView.as_view(), name="credit-note-csv"),
    path("credit_notes/<str:number>", api.CreditNoteDetailView.as_view(), name="credit-note-detail"),
    path("billing/registers", api.RegisterView.as_view(), name="billing-registers"),
    path("billing/settings", api.BillingSettingsView.as_view(), name="billing-settings"),
]
