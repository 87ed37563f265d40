"""The bottom layer: what data, models, train and evaluation all stand on, and none owns.

- :mod:`echo_base.cache` — where derived files (converted models, prepared data, downloads) are cached;
- :mod:`echo_base.errors` — the error types of bad input, which entry points print as one line;
- :mod:`echo_base.atomic` — the one way a folder or a file is written: complete or not at all;
- :mod:`echo_base.lines` — reading the user's text, JSONL and YAML files, errors naming file and line;
- :mod:`echo_base.cli` — what command lines share: argument errors as one line, output paths checked first.

It imports nothing from the project, so every layer can import it.
"""

from echo_base.atomic import atomic_file, atomic_folder, publish_folder, staging_folder, staging_path
from echo_base.cache import cache_dir
from echo_base.errors import BadInputError, DataFormatError, UsageError
from echo_base.lines import iter_jsonl, iter_lines, read_text_records, read_yaml_mapping

__all__ = ["BadInputError", "DataFormatError", "UsageError", "atomic_file", "atomic_folder", "cache_dir", "iter_jsonl",
           "iter_lines", "publish_folder", "read_text_records", "read_yaml_mapping", "staging_folder", "staging_path"]
