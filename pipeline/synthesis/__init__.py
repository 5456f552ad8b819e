"""The synth worker's parts: scheduling model calls, one message's handling, finishing its audio, voices."""
