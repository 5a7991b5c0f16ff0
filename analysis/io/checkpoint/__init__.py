"""Open a checkpoint and read it one tensor at a time, never the whole model.

Safetensors files are memory-mapped and tensors are zero-copy views into the mapping, so reading
a tensor costs page-cache traffic only. `.bin` files go through `torch.load(mmap=True)`. A PEFT LoRA
adapter opens as its own checkpoint of full-shape deltas; `with_base()` turns it into a fine-tune view
(base + B@A*scale, computed lazily per tensor) that analysis and merging treat like any fine-tune.
"""

from mergescope.io.checkpoint.files import METADATA_FILES, TOKENIZER_FILES, VOCAB_FILES
from mergescope.io.checkpoint.lora import AdaptedCheckpoint, LoraCheckpoint
from mergescope.io.checkpoint.model import Checkpoint, CheckpointError, TensorInfo
from mergescope.io.checkpoint.open import open_checkpoint, open_models

__all__ = [
    "AdaptedCheckpoint",
    "Checkpoint",
    "CheckpointError",
    "LoraCheckpoint",
    "METADATA_FILES",
    "TOKENIZER_FILES",
    "TensorInfo",
    "VOCAB_FILES",
    "open_checkpoint",
    "open_models",
]
