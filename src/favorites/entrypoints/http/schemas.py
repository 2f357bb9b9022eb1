"""Request and response shapes. Requests forbid unknown fields; responses document the API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from favorites.domain.models import Favorite


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=512)


class TokenRequest(_Strict):
    user_id: str = Field(description="The user the tokens are for (UUID)")
    roles: list[Literal["user", "admin"]] = Field(min_length=1, max_length=1)


class RefreshRequest(_Strict):
    refresh_token: str = Field(min_length=16, max_length=256)


class BulkRequest(_Strict):
    add: list[str] = Field(default_factory=list, max_length=25,
                           description="Product ids to add (must exist)")
    remove: list[str] = Field(default_factory=list, max_length=25,
                              description="Product ids to remove")


class BulkRead(BaseModel):
    added: list[str] = Field(description="Ids that were not favorites before this request")
    removed: list[str] = Field(description="Ids that were favorites before this request")


class FavoriteItem(BaseModel):
    product_id: str
    created_at: datetime


class FavoriteRead(FavoriteItem):
    user_id: str


class FavoritesPage(BaseModel):
    items: list[FavoriteItem]
    next_cursor: str | None


class FavoritesExport(BaseModel):
    user_id: str
    exported_at: datetime
    count: int
    items: list[FavoriteItem]


class CountRead(BaseModel):
    count: int


class ContainsRead(BaseModel):
    product_ids: list[str]


class TokenPairRead(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    refresh_expires_in: int


class ErasureRead(BaseModel):
    deleted_favorites: int


class ProductRead(BaseModel):
    product_id: str
    status: Literal["active", "deleting"]


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str


def favorite_read(favorite: Favorite) -> dict[str, object]:
    return {"user_id": favorite.user_id, "product_id": favorite.product_id,
            "created_at": favorite.created_at}
