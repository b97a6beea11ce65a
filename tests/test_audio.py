"""The animators' speech encoder pretraining (pretrain_audio): character CTC with padded batches."""

import pytest
import torch

from avguide.data.speech import Voice, synthesize
from avguide.data.text import VOCAB
from avguide.models.expert import ctc_greedy_decode
from avguide.training.audio import SpeechCTC, collate_speech, ctc_outputs, speech_model


def utterances():
    """Two short espeak-ng utterances of different lengths."""
    out = []
    for text in ("bin blue now", "set green"):
        speech = synthesize(text, Voice("en-us+m3", rate=170, pitch=50))
        out.append({"audio": torch.from_numpy(speech.audio), "tokens": torch.tensor(VOCAB.encode(text)), "text": text})
    return out


def test_padding_does_not_change_an_items_ctc_outputs():
    torch.manual_seed(0)
    model = speech_model({}).eval()
    items = utterances()
    batch = collate_speech(items)
    short = len(items[1]["audio"])
    assert batch["audio_lengths"].tolist() == [len(items[0]["audio"]), short] and short < batch["audio"].shape[1]
    with torch.no_grad():
        both, lengths = ctc_outputs(model, batch["audio"], batch["audio_lengths"])
        alone, n = ctc_outputs(model, items[1]["audio"][None], torch.tensor([short]))
    assert lengths[1] == n[0] < lengths[0]
    torch.testing.assert_close(both[1, : n[0]], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_ctc_training_learns_the_transcripts_of_a_batch():
    torch.manual_seed(0)
    model = speech_model({})
    module = SpeechCTC(model, lr=3e-3, warmup_steps=1)
    batch = collate_speech(utterances())
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for _ in range(300):
        model.train()
        module.loss(batch)[0].backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        assert ctc_greedy_decode(*ctc_outputs(model, batch["audio"], batch["audio_lengths"])) == [
            "bin blue now",
            "set green",
        ]
