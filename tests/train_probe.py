"""Five training steps of the speech encoder (the animators' wav2vec 2.0, with its character CTC head) from a fixed
seed on fixed random speech, written as safetensors to argv[1]: tests/test_training.py runs it in fresh processes
under different processor settings."""

import sys

import torch
from safetensors.torch import save_file

from avguide.data.text import VOCAB
from avguide.training.audio import SpeechCTC, speech_model

if __name__ == "__main__":
    torch.manual_seed(0)
    module = SpeechCTC(speech_model({}), lr=1e-3, warmup_steps=1)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, len(VOCAB) - 1, (20,), generator=g)
    batch = {
        "audio": 0.1 * torch.randn(2, 16000, generator=g),
        "audio_lengths": torch.tensor([16000, 12000]),
        "tokens": tokens + (tokens >= VOCAB.blank).long(),  # never the blank
        "token_lengths": torch.tensor([10, 10]),
    }
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    for _ in range(5):
        opt.zero_grad()
        module.loss(batch)[0].backward()
        opt.step()
    save_file({k: v.contiguous() for k, v in module.model.state_dict().items()}, sys.argv[1])
