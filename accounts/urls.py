from __future__ import annotations

from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("accounts/", views.account, name="account"),
    path("accounts/preferences/", views.preferences, name="preferences"),
    path("accounts/waiting/", views.waiting, name="waiting"),
    path("accounts/refused/", views.refused, name="refused"),
    path("invite/<str:token>/", views.invite, name="invite"),
    path("staff/sign-ups/", views.staff, name="staff"),
    path("staff/sign-ups/registration/", views.staff_registration, name="staff_registration"),
    path("staff/sign-ups/invites/", views.staff_invite_create, name="staff_invite_create"),
    path(
        "staff/sign-ups/invites/<id:pk>/withdraw/",
        views.staff_invite_withdraw,
        name="staff_invite_withdraw",
    ),
    path("staff/sign-ups/approvals/<id:pk>/", views.staff_decide, name="staff_decide"),
]
