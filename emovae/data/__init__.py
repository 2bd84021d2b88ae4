"""Corpus loading: audio files -> items (path, emotion, speaker, utterance id)."""
