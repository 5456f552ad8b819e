"""Jobs: job and chapter state, the jobs API (submit, read), and the assembler that follows chunk events."""
