"""avguide: audio-visual guidance of speech-driven 3D facial animation by a lip-reading expert.

Importing the package imports nothing else: each stage imports the modules it needs. Reading lips:
`avguide.reading.read_lips`; the command line: `avguide.cli`.
"""
