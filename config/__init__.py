"""noderouter configuration: YAML → frozen, typed, validated objects.

Review notes: nothing else in noderouter imports YAML; a config that fails
validation is refused as a whole, before anything is changed; secrets are
``schema.Secret`` and never print themselves.
"""

from config.loader import (
    DEFAULT_PATH,
    Config,
    ConfigError,
    Problem,
    load_file,
    load_text,
    reference,
)

__all__ = ["DEFAULT_PATH", "Config", "ConfigError", "Problem", "load_file", "load_text",
           "reference"]
