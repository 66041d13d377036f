"""``spikegpt serve``: the OpenAI-compatible HTTP server, run by uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from spikegpt.commands.common import THREADS_DEFAULT, THREADS_HELP, add_model_arguments
from spikegpt.runtime.products import DECODE_HELP, DECODE_MODES

from .settings import ENV_PREFIX, ServeSettings, SettingsError

DESCRIPTION = """\
Serve a SpikeGPT model over an OpenAI-compatible HTTP API: POST /v1/completions and /v1/chat/completions
(streaming with server-sent events), GET /v1/models, POST /tokenize and /detokenize, GET /health (liveness:
503 only after a failed load), GET /ready (readiness: 503 while the model loads and while draining after
SIGTERM) and GET /metrics (Prometheus). Every response, and the last chunk of every stream, carries an
"energy" field: the request's measured firing rates and the estimated energy of its arithmetic, of the
weights it read (data movement) and their total, beside three baselines.

Several models can be served from one process: give --model once per model (a directory, a Hub id or a
bundled model's name). GET /v1/models lists them, every request is routed by its "model", and each model has its own
engine, batch, queue, prefix-state cache and limits (--max-batch, --max-queue and the cache sizes hold per model);
POST /v1/compare runs one prompt on two or three of them and answers with a table of their differences (the
playground's /compare page shows it).

Concurrent requests share one batch: each prompt is read with the parallel form, then every running sequence
advances by one token per batched recurrent step. Every flag can also be set by an environment variable
SPIKEGPT_<FLAG> (e.g. SPIKEGPT_API_KEY, SPIKEGPT_MAX_BATCH); a flag wins over the variable.
"""

# flag → (help, argparse options); the help gets "(default: ...; env SPIKEGPT_...)" appended
DEFAULTS = ServeSettings()
FLAGS = {
    "--served-model-name": (
        "the name clients send as 'model'; with several --model, give it once per --model, in their order",
        f"the model directory's name, the Hub id or the bundled model's name ({DEFAULTS.model_name} without --model)",
        dict(metavar="NAME", action="append"),
    ),
    "--host": ("address to listen on", DEFAULTS.host, {}),
    "--port": ("port to listen on; 0 lets the system pick a free one", DEFAULTS.port, dict(type=int)),
    "--max-batch": (
        "sequences decoded together in one batched step; more wait in the queue",
        DEFAULTS.max_batch,
        dict(type=int, metavar="N"),
    ),
    "--max-queue": (
        "sequences that may wait for a batch slot; past that, requests get 429",
        DEFAULTS.max_queue,
        dict(type=int, metavar="N"),
    ),
    "--max-prompt-tokens": (
        "longest prompt accepted, in tokens",
        DEFAULTS.max_prompt_tokens,
        dict(type=int, metavar="N"),
    ),
    "--max-tokens-cap": (
        "most tokens one sequence may generate; also the max_tokens of chat requests that give none",
        DEFAULTS.max_tokens_cap,
        dict(type=int, metavar="N"),
    ),
    "--max-body-bytes": (
        "largest request body accepted; larger gets 413",
        DEFAULTS.max_body_bytes,
        dict(type=int, metavar="N"),
    ),
    "--request-body-timeout": (
        "seconds a request body may go without a byte arriving; then it gets 408 and its connection closes (a client "
        "that sends half a body and waits cannot hold a connection)",
        f"{DEFAULTS.request_body_timeout:g}",
        dict(type=float, metavar="SECONDS"),
    ),
    "--api-key": (
        "require 'Authorization: Bearer KEY' on /v1/*, /tokenize and /detokenize (/health, /ready, /metrics stay "
        "open); prefer the environment variable, which the process list does not show",
        "no key",
        dict(metavar="KEY"),
    ),
    "--cors-origins": (
        "browser origins allowed to call the API, or '*' (the variable takes a comma-separated list)",
        "none",
        dict(nargs="+", metavar="ORIGIN"),
    ),
    "--chat-template": (
        "a Jinja chat template file to use instead of the tokenizer's",
        "the tokenizer's, else the plain 'User: ... Assistant:' format in the README",
        dict(metavar="FILE"),
    ),
    "--chat-template-timeout": (
        "seconds one chat template render may take; a template that runs longer (its worker process is killed), "
        "raises, or grows past --chat-template-max-chars gets 400",
        f"{DEFAULTS.chat_template_timeout:g}",
        dict(type=float, metavar="SECONDS"),
    ),
    "--chat-template-max-chars": (
        "longest prompt a chat template may render, in characters (a render's memory is capped from it too)",
        DEFAULTS.chat_template_max_chars,
        dict(type=int, metavar="N"),
    ),
    "--energy-profile": (
        "hardware profile pricing the energy field (per operation, and per byte of weights read from SRAM or "
        "DRAM): 45nm-fp32, 45nm-fp16, 45nm-int8, loihi, openspike-130nm, rram-cim-22nm, or a .toml/.json file",
        "45nm-fp32",
        dict(metavar="NAME|PATH"),
    ),
    "--threads": (THREADS_HELP, f"{THREADS_DEFAULT}, less one CPU kept for HTTP", dict(type=int, metavar="N")),
    "--batch-invariant": (
        "always decode --max-batch rows, so the same request and seed give the same text alone or under any "
        "load; --no-batch-invariant decodes only the running rows",
        "on",
        dict(action=argparse.BooleanOptionalAction),
    ),
    "--compile": (
        "compile the decoding step with torch.compile (needs a C++ compiler): the model loads a minute slower "
        "(/ready says loading meanwhile), then each step runs several times faster on a CPU",
        "off",
        dict(action=argparse.BooleanOptionalAction),
    ),
    "--decode": (DECODE_HELP, DEFAULTS.decode, dict(choices=DECODE_MODES)),
    "--prefill-chunk": (
        "prompt tokens per prompt and prefill call: prompts are read in fixed-shape chunks at multiples of this, "
        "interleaved with decoding steps (one call per step while sequences decode); also where states are cached",
        DEFAULTS.prefill_chunk,
        dict(type=int, metavar="N"),
    ),
    "--prefill-rows": (
        "prompts read together in one prefill call (the call always has this many rows, for batch invariance)",
        DEFAULTS.prefill_rows,
        dict(type=int, metavar="N"),
    ),
    "--state-cache-mb": (
        "prefix-state cache in memory: states at chunk boundaries of prompts and finished sequences, so a request "
        "sharing a prefix (a system prompt, the earlier turns of a chat) prefills only the rest; 0 turns it off",
        DEFAULTS.state_cache_mb,
        dict(type=int, metavar="MB"),
    ),
    "--state-cache-dir": (
        "also keep cached states in this directory (safetensors, tagged with the model's fingerprint), so they "
        "survive a restart",
        "memory only",
        dict(metavar="DIR"),
    ),
    "--state-cache-dir-mb": (
        "the most the state directory holds of this model's states; least recently used files go first",
        DEFAULTS.state_cache_dir_mb,
        dict(type=int, metavar="MB"),
    ),
    "--shutdown-grace": (
        "on SIGTERM or SIGINT, seconds that requests in flight may run on before their streams are ended with an "
        "error event",
        f"{DEFAULTS.shutdown_grace:g}",
        dict(type=float, metavar="SECONDS"),
    ),
    "--access-log": ("log one line per HTTP request", "on", dict(action=argparse.BooleanOptionalAction)),
    "--log-level": (
        "uvicorn's log level",
        DEFAULTS.log_level,
        dict(choices=["critical", "error", "warning", "info", "debug"]),
    ),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser, several=True)
    for flag, (text, default, options) in FLAGS.items():
        variable = ENV_PREFIX + flag.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(flag, help=f"{text} (default: {default}; env {variable})", **options)
    parser.set_defaults(run=run, device=None, dtype=None)  # None: fall back to the variable, then the default
    return parser


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Flags given on the command line over ``SPIKEGPT_*`` variables over defaults."""
    given = {name: getattr(args, name, None) for name in ServeSettings.__dataclass_fields__}
    given = {name: value for name, value in given.items() if value is not None}
    if "cors_origins" in given:
        given["cors_origins"] = tuple(given["cors_origins"])
    given.update(_models_given(given.pop("model", None), given.pop("served_model_name", None)))
    return ServeSettings.from_env(**given)


def _models_given(models: list[str] | None, names: list[str] | None) -> dict:
    """The settings of the --model and --served-model-name flags (each given once per model): one model as
    ``model`` (and ``served_model_name``), several as ``models`` (and ``served_model_names``)."""
    models, names = models or [], names or []
    if len(models) > 1:
        return {"models": tuple(models), **({"served_model_names": tuple(names)} if names else {})}
    if len(names) > 1:
        raise SettingsError(f"--served-model-name was given {len(names)} times for one model: give it once per --model")
    return {
        **({"model": models[0]} if models else {}),
        **({"served_model_name": names[0]} if names else {}),
    }


def _draining_server(config, hosts):
    """A uvicorn server that drains before it shuts down: on SIGTERM the host stops taking requests (``/ready``
    and new requests answer 503, which a load balancer retries elsewhere) and the requests in flight run to their
    end or the grace, all while the port stays open; only then does uvicorn close it (a second signal: at once).
    After a clean shutdown the process exits with status 0 (uvicorn alone would re-raise the signal)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            hosts.begin_shutdown()
            drained = asyncio.ensure_future(hosts.drained())
            while not drained.done() and not self.force_exit:
                await asyncio.wait([drained], timeout=0.05)
            drained.cancel()
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                if not self.force_exit:  # shut down as asked: nothing left to re-raise
                    self._captured_signals.clear()

    return DrainingServer(config)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    settings = settings_from_args(args)
    load_errors: list[Exception] = []

    def on_load_error(error: Exception) -> None:
        load_errors.append(error)
        server.should_exit = True

    app = create_app(settings, on_load_error=on_load_error)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,  # a backstop: streams end at the grace
    )
    server = _draining_server(config, app.state.hosts)
    server.run()
    if load_errors:
        raise load_errors[0]
    return 0
