"""Favorites (wishlist) microservice."""
