"""Feature flags: OpenFeature, evaluated in process from a flagd flag file."""

from favorites.adapters.flags.openfeature import FlagsFileError, OpenFeatureFlags
from favorites.adapters.flags.openfeature import check_file as check_flags_file

__all__ = ["FlagsFileError", "OpenFeatureFlags", "check_flags_file"]
