"""Generation backends shared by evaluation, distillation, difficulty and checkpoint scoring; see
base.py for the interface. The names stages and tests use are re-exported here."""

from r1v3.generation.base import (
    BACKENDS, THINK_TAGS, VLLM_INSTALL, Backend, Completion, OnResult, Progress, Request, Sampling, ban_spellings,
    check_requests, check_sampling, count_image_parts, make_backend, open_backend, resolve_backend, rgb_images,
    row_seed, special_ids_to_drop, think_tags_are_special, vllm_available,
)
from r1v3.generation.local import (
    _CHUNK_ROWS, SeededSampler, StepEntropies, TransformersBackend, bad_words_ids, entropy,
)
from r1v3.generation.openai_http import OpenAIBackend, api_key, retry_after_seconds, scrub_secrets, text_messages
from r1v3.generation.records import generate_records, has_records, read_records, sampling_of
from r1v3.generation.vllm_engine import VLLMBackend, vllm_prompt, vllm_sampling_kwargs

__all__ = [
    "BACKENDS", "THINK_TAGS", "VLLM_INSTALL", "Backend", "Completion", "OnResult", "OpenAIBackend", "Progress",
    "Request", "Sampling", "SeededSampler", "StepEntropies", "TransformersBackend", "VLLMBackend", "_CHUNK_ROWS", "api_key",
    "bad_words_ids", "ban_spellings", "check_requests", "check_sampling", "count_image_parts", "entropy",
    "generate_records", "has_records", "make_backend", "open_backend", "read_records", "resolve_backend",
    "retry_after_seconds", "rgb_images", "row_seed", "sampling_of", "scrub_secrets", "special_ids_to_drop", "text_messages",
    "think_tags_are_special", "vllm_available", "vllm_prompt", "vllm_sampling_kwargs",
]
