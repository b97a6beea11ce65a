import hashlib

import pytest

# A wav2vec 2.0 of wav2vec2-base's structure (group norm, post-norm transformer) at a test's size: the audio encoder
# of converted published animators in the tests.
SMALL_BASE_AUDIO = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(32,) * 7,
    feat_extract_norm="group",
    do_stable_layer_norm=False,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    mask_time_prob=0.05,
    layerdrop=0.0,
)

# A reader (expert or judge) small enough to train in a test.
TINY_READER = dict(
    d_model=32,
    n_heads=2,
    ffn_dim=64,
    conformer_layers=1,
    conv_kernel=5,
    decoder_layers=1,
    stem_channels=8,
    resnet_channels=(8, 16),
    crop_size=24,
    video_pool=1,
    dropout=0.0,
)


@pytest.fixture
def digest():
    """Hash of every file below a folder, by relative path: equal digests mean byte-identical trees."""

    def of(root):
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    return of


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where a CUDA device is."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
