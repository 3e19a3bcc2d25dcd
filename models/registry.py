"""Every architecture, one entry each: where its model class lives, the config `linexport train`
trains, a tiny config for the export and runtime tests, and whether its state is a KV cache.
Adding an arch is adding an entry here. Plain data without torch: the CLI reads it at startup.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str
    module: str  # the module holding the model class, imported on first use
    class_name: str
    demo_config: dict  # the bundled demo model's sizes (models/train.py)
    test_config: dict  # tiny, odd sizes, so shape mix-ups show (tests/export, tests/runtime)
    kv_cache: bool = False  # the state grows one entry per token (dim PAST_SEQ) instead of fixed size


TEST_CHUNK = 16  # the test models' chunk_size: a prompt of 37 tokens spans three chunks

# The block archs' sizes. The demo ones train in about an hour on two CPU cores (both at once,
# one thread each) and ship inside the package (< 5 MB); the softmax baseline has the linear
# demo's sizes, parameter for parameter, so the comparison differs in the attention only.
_DEMO_BLOCKS = dict(vocab_size=256, d_model=128, n_layers=5, n_heads=4, head_dim=32, d_ff=512)
_TEST_BLOCKS = dict(vocab_size=256, d_model=40, n_layers=2, n_heads=3, head_dim=15, d_ff=56)

_ENTRIES = (
    Arch("linear", "linexport.models.linear", "LinearLM",
         demo_config=dict(_DEMO_BLOCKS, chunk_size=64, shift_tokens=True),
         test_config=dict(_TEST_BLOCKS, chunk_size=TEST_CHUNK, shift_tokens=True)),
    Arch("flash", "linexport.models.flash", "FlashLM",
         demo_config=dict(vocab_size=256, d_model=128, n_layers=7, qk_dim=64, expansion=2.0,
                          chunk_size=64, rotary_dim=32),
         test_config=dict(vocab_size=256, d_model=40, n_layers=2, qk_dim=12, rotary_dim=8,
                          expansion=1.5, chunk_size=TEST_CHUNK)),
    Arch("softmax", "linexport.models.softmax", "SoftmaxLM",
         demo_config=dict(_DEMO_BLOCKS), test_config=dict(_TEST_BLOCKS), kv_cache=True),
    # Small buckets and chunks in the test model: at T = 37 most keys fall outside a window.
    Arch("reformer", "linexport.models.reformer", "ReformerLM",
         demo_config=dict(_DEMO_BLOCKS, n_hashes=2, n_buckets=8, bucket_size=32),
         test_config=dict(_TEST_BLOCKS, n_hashes=2, n_buckets=4, bucket_size=4), kv_cache=True),
)
ARCHS: dict[str, Arch] = {a.name: a for a in _ENTRIES}
