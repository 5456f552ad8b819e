"""How long the spoken form takes over a book-sized text dense with what it rewrites.

    .venv/bin/python scripts/bench_spoken.py [--chars 200000] [--repeat 5]

Splits the text as a job does (`split_speakers` with the default chunk sizes), then times
`spoken` over every chunk, `--repeat` times; prints each run and the median. CPU only, no servers.
"""

from __future__ import annotations

import argparse
import statistics
import time

from pipeline.contracts.settings import Settings
from pipeline.text.speakers import split_speakers
from pipeline.text.spoken import spoken

SAMPLE = (
    "On 2024-03-15 at 17:30, Dr. Smith of 221B Baker St. paid £1,234.56 (about $1,500) for 3.5 kg of "
    "tea, a 12% rise since the '80s.[1] Prof. Jones, born in 1966, wrote pages 3-5 of the U.S. report, "
    "e.g. the part on St. Paul's, i.e. chapter 2, etc.² \"STOP,\" said the FBI agent at 5 p.m.; mail "
    "him at agent@example.com or see https://example.com/report for the 1st, 2nd and 23rd items. "
    "Then -7 degrees, 10,000 people & 1/2 of the town + the 1970s band played on.[12][13]\n\n"
    "[SPEAKER0] It cost €3.50 and ¥100 on 5 May 1999.\n[SPEAKER1] Gen. Lee and Sgt. Pepper agreed.\n\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = Settings()
    text = (SAMPLE * (args.chars // len(SAMPLE) + 1))[: args.chars]
    chunks = [c.text for c in split_speakers(text, max_words=settings.chunk_max_words,
                                              target_words=settings.chunk_target_words,
                                              max_chars=settings.chunk_max_chars)]
    spoken(chunks[0])  # load inflect's tables before timing
    runs = []
    for i in range(args.repeat):
        started = time.perf_counter()
        out = [spoken(c) for c in chunks]
        runs.append(time.perf_counter() - started)
        print(f"run {i + 1}: {runs[-1]:.3f} s for {len(chunks)} chunks, {len(text):,} chars "
              f"-> {sum(len(o) for o in out):,} chars spoken")
    print(f"median {statistics.median(runs):.3f} s ({len(text) / statistics.median(runs) / 1e6:.2f} M chars/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
