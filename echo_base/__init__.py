"""The bottom layer: what data, models, train and evaluation all stand on, and none owns.

- :mod:`echo_base.cache` — where derived files (converted models, prepared data, downloads) are cached;
- :mod:`echo_base.errors` — the error types of bad input, which entry points print as one line;
- :mod:`echo_base.atomic` — the one way a folder is written: complete or not at all.

It imports nothing from the project, so every layer can import it.
"""

from echo_base.atomic import atomic_folder, publish_folder, staging_folder, staging_path
from echo_base.cache import cache_dir
from echo_base.errors import BadInputError, UsageError

__all__ = ["BadInputError", "UsageError", "atomic_folder", "cache_dir", "publish_folder", "staging_folder",
           "staging_path"]
