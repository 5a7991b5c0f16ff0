"""Which files of a model directory mean what: weights, config, tokenizer, model card."""

# Everything that travels with a tokenizer (copied into a merged model; mergekit's list plus the vocab
# files the checkpoints here know).
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
# The files whose content defines the token <-> id mapping (tokenizer_config only carries options).
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model")
# Metadata besides the weights that an analysis depends on (its cache key covers them).
METADATA_FILES = ("config.json", "README.md", "adapter_config.json", *VOCAB_FILES)
