"""Settings that would make the service insecure are refused at start-up, in every environment."""

from __future__ import annotations

import pytest

from favorites.config import ConfigError, load_settings


@pytest.mark.parametrize("env", ["development", "test", "production"])
def test_a_jwt_secret_shorter_than_32_characters_is_refused(env: str) -> None:
    with pytest.raises(ConfigError, match="FAVORITES_JWT_SECRET: must be at least 32 characters"):
        load_settings(_env_file=None, env=env, jwt_secret="s" * 31)


def test_a_jwt_secret_of_32_characters_is_accepted() -> None:
    assert load_settings(_env_file=None, env="development",
                         jwt_secret="s" * 32).jwt_secret is not None
