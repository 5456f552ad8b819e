"""`python -m pipeline.engines.sim [flags]`: the sim engine in the foreground."""

from pipeline.engines.sim.server import main

main()
