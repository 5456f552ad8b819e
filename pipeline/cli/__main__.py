"""`python -m pipeline.cli ARGS`: the same as `tts-pipeline ARGS`."""

import sys

from pipeline.cli.main import main

sys.exit(main())
