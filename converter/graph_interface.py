"""The names of a native decoder graph's inputs and outputs: what the converter writes and the
service binds, stated once.

  inputs   input_ids int64 (batch, sequence)
           seqlens_k int32 (batch): tokens in the cache after this step, minus one
           total_sequence_length int32 (): at least the longest of those plus one
           num_logits_to_keep int64 (1): how many final positions get logits (1 while decoding);
             the CUDA target takes logits_start instead, minus that count, so that no node
             computes a Slice start on the host
           past_key_values.{i}.key / .value (batch, kv_heads, capacity, head_dim), compute type
           temperatures float32 (batch): each row's sampling temperature (graphs with candidates)
  outputs  logits float32 (batch, kept positions, vocab)
           present.{i}.key / .value: the same shape as the past; bind them to the past buffers
           candidate_ids int64, candidate_logits float32 (batch, candidates): the last
             position's most likely tokens, and log_normalizer float32 (batch): the log of
             sum(exp(logits / temperature)) over the vocabulary (graphs with candidates)
           last_hidden_state float32 (batch, sequence, hidden): the final norm's output at every
             position of the step, as transformers' last_hidden_state (embeddings pool it)
"""

INPUT_IDS = "input_ids"
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
NUM_LOGITS_TO_KEEP = "num_logits_to_keep"
LOGITS_START = "logits_start"
TEMPERATURES = "temperatures"
LOGITS = "logits"
CANDIDATE_IDS = "candidate_ids"
CANDIDATE_LOGITS = "candidate_logits"
LOG_NORMALIZER = "log_normalizer"
LAST_HIDDEN_STATE = "last_hidden_state"


# Graphs exported by optimum (`--backend optimum`) share these names (input_ids, logits and the
# past/present prefixes) and add their own attention_mask and position_ids.
PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"


def past_name(layer: int, kind: str) -> str:
    """kind: "key" or "value"."""
    return f"{PAST_PREFIX}{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"{PRESENT_PREFIX}{layer}.{kind}"
