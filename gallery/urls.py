from __future__ import annotations

from django.urls import path

from gallery import views

app_name = "gallery"

urlpatterns = [
    path("", views.index, name="index"),
    path("generations/new/", views.create, name="create"),
    path("generations/updates/", views.updates, name="updates"),
    path("generations/bulk/", views.bulk, name="bulk"),
    path("export/", views.export_all, name="export"),
    path("generations/<id:pk>/", views.detail, name="detail"),
    path("generations/<id:pk>/retry/", views.retry, name="retry"),
    path("generations/<id:pk>/rerun/", views.rerun, name="rerun"),
    path("generations/<id:pk>/favorite/", views.favorite, name="favorite"),
    path("generations/<id:pk>/delete/", views.delete, name="delete"),
    path(
        "generations/<id:pk>/collections/",
        views.generation_collections,
        name="generation_collections",
    ),
    path("images/<id:pk>/", views.image_file, name="image"),
    path("images/<id:pk>/thumbnail/", views.image_thumbnail, name="thumbnail"),
    path("images/<id:pk>/thumbnail/large/", views.image_thumbnail_large, name="thumbnail_large"),
    path("images/<id:pk>/share/", views.share_create, name="share_create"),
    path("collections/", views.collection_list, name="collections"),
    path("collections/add/", views.collection_add, name="collection_add"),
    path("collections/<id:pk>/", views.collection_detail, name="collection"),
    path("collections/<id:pk>/edit/", views.collection_edit, name="collection_edit"),
    path("collections/<id:pk>/export/", views.collection_export, name="collection_export"),
    path("collections/<id:pk>/delete/", views.collection_delete, name="collection_delete"),
    path("collections/<id:pk>/remove/", views.collection_remove, name="collection_remove"),
    path("collections/<id:pk>/share/", views.collection_share, name="collection_share"),
    path("shares/", views.share_list, name="shares"),
    path("shares/<id:pk>/revoke/", views.share_revoke, name="share_revoke"),
    path("shares/<id:pk>/edit/", views.share_edit, name="share_edit"),
]
