"""Running the pipeline: embedded servers on loopback, process wiring of services, `up` and `demo`."""
