from __future__ import annotations

from django.urls import path

from ledger import views

app_name = "ledger"

urlpatterns = [
    path("usage/", views.usage, name="usage"),
    path("staff/usage/", views.staff_usage, name="staff_usage"),
    path("staff/usage/ledger.csv", views.staff_ledger_csv, name="staff_ledger_csv"),
]
