"""The `tts-pipeline` command: the parser in `main`, one module per command group."""
