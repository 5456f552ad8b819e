"""`tts-pipeline`: the one command line of the product.

    tts-pipeline up                      embedded stack + engine + synth worker, Ctrl-C stops all
    tts-pipeline demo                    run the main job on a throw-away embedded stack
    tts-pipeline worker synth            a synth worker against the configured servers
    tts-pipeline engine --kind sim       the stand-in model server (Higgs protocol)
    tts-pipeline engine --kind piper     real speech on a CPU (Piper), same protocol
    tts-pipeline voices sync             upload voice_presets/ to voices/ in the bucket
    tts-pipeline voices list|add|delete  the voice library (as /v1/audio/voices)
    tts-pipeline submit BOOK             a book as a job (jobs, status, fetch, cancel, retry follow it)
    tts-pipeline say TEXT                synthesise one text through the bus, save the WAV
    tts-pipeline spoken FILE|-           print a text's chunks as they will be read (the spoken form)
    tts-pipeline gateway                 the HTTP gateway (/generate, /v1/audio/speech) on port 8888
    tts-pipeline dlq list|show|replay    inspect dead letters and re-drive them
    tts-pipeline bench [-n 10 -c 5]      the original benchmark against the gateway, a model server or the bus

Errors a user can fix (a server not reachable, bad arguments) print one line and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pydantic import ValidationError

from pipeline.cli import logs
from pipeline.contracts.errors import PipelineError, StartupError
from pipeline.contracts.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise StartupError(f"invalid setting TTS_{where.upper()}: {first.get('msg')}") from None


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.max_in_flight:
        settings = settings.model_copy(update={"max_in_flight": args.max_in_flight})
    logs.configure(settings.log_level, settings.log_json)
    from pipeline.stack import runtime

    if args.kind == "synth":
        runtime.run_service(runtime.run_synth_worker(settings))
    elif args.kind == "ingest":
        from pipeline import ingest

        runtime.run_service(runtime.run_broker_service(settings, "ingest", ingest.Ingestor, ingest.build_broker))
    else:
        from pipeline.jobs import assembler

        runtime.run_service(runtime.run_broker_service(settings, "assemble", assembler.Assembler, assembler.build_broker))
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    from pipeline.cli import jobs as jobs_cli

    settings = _settings()
    logs.configure("warning", settings.log_json)
    if args.command == "submit":
        return asyncio.run(jobs_cli.submit(settings, args.file, args.voice, args.format, args.job_id, not args.no_wait,
                                           args.cast, args.narrator, args.dialogue,
                                           normalize=False if args.no_normalize else None))
    if args.command == "status":
        return asyncio.run(jobs_cli.status(settings, args.job_id, args.json))
    if args.command == "fetch":
        return asyncio.run(jobs_cli.fetch(settings, args.job_id, args.out))
    if args.command == "jobs":
        return asyncio.run(jobs_cli.list_all(settings, args.json, args.limit))
    if args.command == "cancel":
        return asyncio.run(jobs_cli.cancel(settings, args.job_id))
    return asyncio.run(jobs_cli.retry(settings, args.job_id))


def _cmd_spoken(args: argparse.Namespace) -> int:
    from pipeline.cli import spoken

    return spoken.run(_settings(), args.file, args.written, dialogue=args.dialogue)


def _cmd_engine(args: argparse.Namespace) -> int:
    if args.kind == "sim":
        from pipeline.engines.sim.server import config_from_args, serve

        serve(config_from_args(args), args.host, args.port)
        return 0
    if args.kind == "piper":
        from pipeline.engines import piper_http as piper

        logs.configure("warning")
        config = piper.config_from_args(args)
        if not config.threads and _settings().engine_threads:
            config = config.model_copy(update={"threads": _settings().engine_threads})
        piper.serve(config, args.host, args.port)
        return 0
    raise StartupError(f"unknown engine kind {args.kind!r}")


def _cmd_voices(args: argparse.Namespace) -> int:
    from pipeline.cli import voices

    settings = _settings()
    logs.configure("warning", settings.log_json)
    if args.action == "sync":
        from pipeline.synthesis.voices import sync_folder

        return asyncio.run(sync_folder(settings, args.dir or settings.voice_presets_dir))
    if args.action == "list":
        return asyncio.run(voices.list_all(settings, args.json))
    if args.action == "add":
        if bool(args.transcript) == bool(args.transcript_file):
            raise StartupError("give the clip's words with --transcript TEXT or --transcript-file FILE (one of them)")
        return asyncio.run(voices.add(settings, args.name, args.clip, args.transcript, args.transcript_file,
                                      args.scene_prompt, args.overwrite, args.force))
    return asyncio.run(voices.delete(settings, args.name, args.force))


def _cmd_up(args: argparse.Namespace) -> int:
    from pipeline.stack import runtime
    from pipeline.stack.embedded import run_up

    settings = _settings()
    logs.configure(settings.log_level, settings.log_json)
    return runtime.run_service(run_up(settings, data_dir=args.data_dir, engine_latency_s=args.engine_latency_s,
                                      engine_port=args.engine_port))


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.stack.embedded import run_demo

    settings = _settings()
    logs.configure("warning", settings.log_json)
    return asyncio.run(run_demo(settings, out_dir=args.out, text_file=args.text))


def _cmd_say(args: argparse.Namespace) -> int:
    from pipeline.client import say

    settings = _settings()
    logs.configure("warning", settings.log_json)
    return asyncio.run(say(settings, " ".join(args.text), out=args.out, voice=args.voice,
                           priority=args.priority, timeout_s=args.timeout_s))


def _cmd_gateway(args: argparse.Namespace) -> int:
    from http_gateway.server import run_gateway
    from pipeline.stack import runtime

    settings = _settings()
    logs.configure(settings.log_level, settings.log_json)
    runtime.run_service(run_gateway(settings, host=args.host, port=args.port))
    return 0


def _cmd_dlq(args: argparse.Namespace) -> int:
    from pipeline.cli import dlq as dlq_cli

    settings = _settings()
    logs.configure("warning", settings.log_json)
    if args.action == "list":
        return asyncio.run(dlq_cli.list_letters(settings, args.json, args.limit))
    if args.action == "show":
        if len(args.seq) != 1:
            raise StartupError("dlq show takes one SEQ")
        return asyncio.run(dlq_cli.show_letter(settings, args.seq[0]))
    return asyncio.run(dlq_cli.replay_letters(settings, args.seq, args.all, args.keep))


def _cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.bench import run as bench
    from pipeline.bench.load import TEXTS, BenchOptions

    settings = _settings()
    logs.configure("warning", settings.log_json)
    options = BenchOptions(
        requests=args.requests, concurrent=args.concurrent, target=args.target, url=args.url,
        texts=bench.read_texts(args.texts) if args.texts else TEXTS, priority=args.priority,
        timeout_s=args.timeout_s, fresh=not args.allow_cache, gpu_log=args.gpu_log,
    )
    return bench.main(settings, options, args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tts-pipeline", description="High-throughput TTS over NATS JetStream and S3.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run the embedded stack (nats-server, SeaweedFS, engine, synth worker)")
    p.add_argument("--data-dir", default=".tts-data", help="where the servers keep their data (default: .tts-data)")
    p.add_argument("--engine-latency-s", type=float, default=0.2, help="stand-in engine latency per call")
    p.add_argument("--engine-port", type=int, default=None,
                   help="port of the local engine (default: the port of TTS_BACKEND_URLS' first URL, 8000)")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("demo", help="synthesise a short text end to end on a throw-away embedded stack")
    p.add_argument("--out", default="demo-output", help="folder for the WAV files (default: demo-output)")
    p.add_argument("--text", default=None, help="a UTF-8 text file to speak instead of the built-in one")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("worker", help="run a worker against the configured servers")
    p.add_argument("kind", choices=["synth", "ingest", "assemble"])
    p.add_argument("--max-in-flight", type=int, default=0, help="override TTS_MAX_IN_FLIGHT")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("engine", help="run a model server speaking the Higgs vLLM protocol")
    p.add_argument("--kind", choices=["sim", "piper"], default="sim")
    from pipeline.engines import piper_http as piper
    from pipeline.engines.sim import server as sim

    sim.add_arguments(p)
    piper.add_arguments(p)
    p.set_defaults(func=_cmd_engine)

    p = sub.add_parser("voices", help="the voice library: list, add a clip, delete, or sync a preset folder")
    actions = p.add_subparsers(dest="action", required=True, metavar="{list,add,delete,sync}")
    v = actions.add_parser("list", help="stored voices and the model servers' built-ins")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_voices)
    v = actions.add_parser("add", help="store a 3-30 s clip of one speaker as a named voice (checked first)")
    v.add_argument("name")
    v.add_argument("clip", help="an audio file (WAV, FLAC, OGG, MP3)")
    v.add_argument("--transcript", default=None, help="the words spoken in the clip")
    v.add_argument("--transcript-file", default=None, help="a UTF-8 file with the words spoken in the clip")
    v.add_argument("--scene-prompt", default=None, help="the scene description sent with the voice")
    v.add_argument("--overwrite", action="store_true", help="replace a stored voice of that name")
    v.add_argument("--force", action="store_true", help="replace it even while an unfinished job uses it")
    v.set_defaults(func=_cmd_voices)
    v = actions.add_parser("delete", help="remove a stored voice (refused while an unfinished job uses it)")
    v.add_argument("name")
    v.add_argument("--force", action="store_true", help="delete it even while an unfinished job uses it")
    v.set_defaults(func=_cmd_voices)
    v = actions.add_parser("sync", help="upload a folder of name.wav + name.txt (+ name.json with a system_prompt) as presets")
    v.add_argument("--dir", default=None, help="the preset folder (default: TTS_VOICE_PRESETS_DIR, voice_presets)")
    v.set_defaults(func=_cmd_voices)

    p = sub.add_parser("submit", help="submit a book (.txt, .md, .epub) as a job and follow its progress")
    p.add_argument("file")
    p.add_argument("--voice", default=None, help="a preset voice for every chapter")
    p.add_argument("--cast", default=None,
                   help="voices of speaker tags and characters: alice=en_woman,SPEAKER1=en_man or a JSON file")
    p.add_argument("--narrator", default=None, help="the voice of text outside any speaker tag")
    p.add_argument("--dialogue", action="store_true",
                   help='quoted speech spoken by the cast\'s "dialogue" voice, narration by the narrator')
    p.add_argument("--format", choices=["wav", "flac", "mp3"], default="wav")
    p.add_argument("--job-id", default=None, help="default: the file name plus a random suffix")
    p.add_argument("--no-wait", action="store_true", help="submit and exit without following progress")
    p.add_argument("--no-normalize", action="store_true",
                   help="send the text as written, without the spoken form (see `tts-pipeline spoken`)")
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("spoken", help="print a text's chunks in the spoken form the model will read")
    p.add_argument("file", help="a .txt, .md or .epub book, any UTF-8 text file, or - for standard input")
    p.add_argument("--written", action="store_true", help="print each chunk's written form above its spoken form")
    p.add_argument("--dialogue", action="store_true", help="cut quoted speech apart as a job's dialogue mode does")
    p.set_defaults(func=_cmd_spoken)

    p = sub.add_parser("jobs", help="every job (from here, the gateway or the bus), newest first")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=50, help="show the newest LIMIT jobs (default 50)")
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("status", help="a job's chapters and chunk counts")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("fetch", help="download a finished job's chapters, subtitles and manifest")
    p.add_argument("job_id")
    p.add_argument("--out", default=".")
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("cancel", help="cancel a job: its queued chunks are skipped (retry resumes it)")
    p.add_argument("job_id")
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("retry", help="republish a job's failed chunks (a cancelled job: every chunk not yet done)")
    p.add_argument("job_id")
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("say", help="speak one text through the bus and save the WAV")
    p.add_argument("text", nargs="+")
    p.add_argument("--out", default="say.wav")
    p.add_argument("--voice", default=None)
    p.add_argument("--priority", choices=["interactive", "bulk"], default="interactive")
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.set_defaults(func=_cmd_say)

    p = sub.add_parser("gateway", help="run the HTTP gateway (original /generate API, OpenAI speech route)")
    p.add_argument("--host", default=None, help="bind address (default: TTS_GATEWAY_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="bind port (default: TTS_GATEWAY_PORT, 8888)")
    p.set_defaults(func=_cmd_gateway)

    p = sub.add_parser("dlq", help="dead letters: list, show SEQ, replay SEQ... or replay --all")
    p.add_argument("action", choices=["list", "show", "replay"])
    p.add_argument("seq", nargs="*", type=int, help="sequence numbers in TTS_DLQ (see `dlq list`)")
    p.add_argument("--all", action="store_true", help="replay: every dead letter")
    p.add_argument("--keep", action="store_true", help="replay: keep the letters in TTS_DLQ")
    p.add_argument("--json", action="store_true", help="list: JSON instead of a table")
    p.add_argument("--limit", type=int, default=None, help="list: at most this many, oldest first")
    p.set_defaults(func=_cmd_dlq)

    p = sub.add_parser("bench", help="the original benchmark: N requests, C at a time, against gateway, backend or bus")
    p.add_argument("-n", "--requests", type=int, default=10, help="requests to send (default: 10)")
    p.add_argument("-c", "--concurrent", type=int, default=5, help="requests in flight at once (default: 5)")
    p.add_argument("--url", default=None, help="gateway (default http://localhost:8888) or model server "
                   "(default: the first TTS_BACKEND_URLS); the bus target uses TTS_NATS_URL")
    p.add_argument("--target", choices=["gateway", "backend", "bus"], default="gateway")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--texts", default=None, help="a UTF-8 file of texts, one per line (default: eight built-in)")
    p.add_argument("--gpu-log", default=None, help="a monitor_gpu.sh CSV to summarise over the run's time window")
    p.add_argument("--priority", choices=["interactive", "bulk"], default="bulk", help="bus target: the queue")
    p.add_argument("--timeout-s", type=float, default=120.0, help="per request (default: 120, the original's)")
    p.add_argument("--allow-cache", action="store_true",
                   help="send repeated texts unchanged (default: every request is fresh synthesis)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (StartupError, PipelineError) as exc:
        print(f"tts-pipeline: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
