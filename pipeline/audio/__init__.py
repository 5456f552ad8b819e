"""Audio: WAV I/O and repair, canonical form and checks, loudness, the ASR gate and its word error rate."""
