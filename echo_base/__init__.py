"""The bottom layer: what data, models, train and evaluation all stand on, and none owns.

- :mod:`echo_base.cache` — where derived files (converted models, prepared data, downloads) are cached;
- :mod:`echo_base.errors` — the error types of bad input (and of refused saves, non-finite training), which entry
  points print as one line (:func:`command_status`);
- :mod:`echo_base.atomic` — the one way a folder or a file is written: complete or not at all, durably;
- :mod:`echo_base.lines` — reading the user's text, JSONL and YAML files, errors naming file and line;
- :mod:`echo_base.cli` — what command lines share: argument errors as one line, output paths checked first.

It imports nothing from the project, so every layer can import it.
"""

from echo_base.atomic import (atomic_file, atomic_folder, publish_folder, recover_folder, remove_folder, staging_folder,
                              staging_path, storage_errors)
from echo_base.cache import cache_dir
from echo_base.errors import BadInputError, DataFormatError, NonFiniteError, StorageError, UsageError, command_status, shown
from echo_base.lines import iter_jsonl, iter_lines, read_text_records, read_yaml_mapping

__all__ = ["BadInputError", "DataFormatError", "NonFiniteError", "StorageError", "UsageError", "atomic_file",
           "atomic_folder", "cache_dir", "command_status", "iter_jsonl", "iter_lines", "publish_folder",
           "read_text_records", "read_yaml_mapping", "recover_folder", "remove_folder", "shown", "staging_folder",
           "staging_path", "storage_errors"]
