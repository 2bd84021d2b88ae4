"""Judges of the exported audio that do not depend on the project's own CNN emotion judge.

- `audio_quality`: DNSMOS (no-reference P.835 quality: sig, bak, ovrl, P.808) and STOI.
- `smile_judge`: a second emotion judge, eGeMAPS functionals (openSMILE) + a scikit-learn
  classifier trained on the real training speakers.

Both need the `quality` extra: `pip install "emovae-sweeps[quality]"`.
"""
