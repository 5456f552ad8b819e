"""`tts-pipeline bench`: the load, its targets, the GPU log and the benchmark lab."""
