"""Configuration, read once from the environment in groups (`load`: the whole `Settings`;
one module per group; `values`: the kinds of value and the one-line errors)."""

from app.core.settings.load import Settings, load_settings
from app.core.settings.values import ConfigError, Quota

__all__ = ["ConfigError", "Quota", "Settings", "load_settings"]
