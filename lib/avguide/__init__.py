"""avguide: audio-visual guidance of speech-driven 3D facial animation by a lip-reading expert."""


def read_lips(video, audio=None, model_dir=None, beam_size: int = 5) -> str:
    """What is said in `video` (a path to a grey mouth-crop mp4, or a (T, H, W) array, uint8 or in [0, 1]):
    read by the audio-visual expert when `audio` (a wav path or 16 kHz samples) is given, else by the
    visual-only judge; both from `model_dir` (default data/models/expert, as the pretrain_expert stage writes it)."""
    from avguide.models.expert import read_lips as _read_lips

    return _read_lips(video, audio, model_dir=model_dir, beam_size=beam_size)


__all__ = ["read_lips"]
