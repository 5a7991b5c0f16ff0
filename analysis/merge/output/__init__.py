"""Writing a merged model: atomic sharded safetensors (shards.py) and its model card (card.py)."""

from mergescope.merge.output.card import (
    AUTO_HASH_LIMIT,
    InputRecord,
    append_to_card,
    model_card,
    provenance,
    sha256_file,
)
from mergescope.merge.output.shards import DEFAULT_SHARD_SIZE, ModelWriter, WriteResult, check_output, write_safetensors

__all__ = [
    "AUTO_HASH_LIMIT",
    "DEFAULT_SHARD_SIZE",
    "InputRecord",
    "ModelWriter",
    "WriteResult",
    "append_to_card",
    "check_output",
    "model_card",
    "provenance",
    "sha256_file",
    "write_safetensors",
]
