"""pixelmill's API emulator: a loopback server that speaks the OpenAI, Azure OpenAI and Gemini image APIs, and the
remote-job APIs of fal (queue), Replicate and Black Forest Labs, and the Hugging Face router, on one port.

    async with Emulator(latency=0.05, faults={"server_error": 0.1}) as emu:
        ... OpenAI(base_url=emu.openai_base_url, api_key="sk-test-x") ...

    with Emulator().run_in_thread() as emu:   # from sync code: own loop in a daemon thread
        ...

Routes: OpenAI `/v1/images/{generations,edits,variations}`, `/v1/models`; Azure
`/openai/deployments/{d}/images/{generations,edits}?api-version=` and `/openai/v1/images/...`; Gemini
`/{v1beta,v1alpha,v1}/models/{m}:generateContent` (and `:streamGenerateContent`); `/files/<id>.png` for
DALL·E url answers; fal `POST /{model id}` (told apart by its `Authorization: Key` or a `fal-ai/` path) with
status/result/cancel under `/{owner/app}/requests/{id}` and media on `/fal-cdn/files/`; Replicate, BFL and
HF as their route modules say. Remote jobs run on a lazy clock (`jobs`): `emu.jobs()`, `emu.submits()` count
them. Prompt markers force one request's fate: `[[fault:NAME]]` (any name in FAULTS, or
`thoughts`), `[[latency:SECONDS]]`.
Batch APIs (docs/emulator-batch.md): OpenAI `/v1/files…`, `/v1/batches…`; Gemini `/upload/{v}/files`,
`/{v}/files…`, `/download/{v}/files/{id}:download`, `…:batchGenerateContent`, `/{v}/batches…`, on an
accelerated clock (`batch_latency`, `batch_window`, `batch_fates`).

Layout (imports run down this list, never up, and none inside a function goes up either):
- `server`: `Emulator`, `ThreadRunner`, `serve`; builds the app from the route modules around one state and
  owns binding, start and stop. Only this `__init__` imports it.
- `routes/`: one module per API, `openai` (OpenAI and Azure), `gemini`, `openai_batch`, `gemini_batch`, `fal`,
  `replicate`, `bfl`, `hf`; none imports another (the server wires the v1 paths OpenAI and Gemini share, by the
  request's key).
- `validation/`: each API's request rules (`openai`, `gemini`), turning a request into a job or a 400.
- `answers/`: each API's answers from a job (`openai`, `gemini`), shared by the synchronous and batch routes.
- `exchange`: one request's way through, the same for every API: log and count (`observe`), decide its fate
  and wait (`admit`), answer or damage the answer (`send`, `cut`).
- `state`: `EmulatorState`, everything shared across requests: config, model table, log, in-flight counts,
  fault dice, rate-limit window, image cache, files, signing secret, the batch store.
- `batches`: the batch APIs' files on disk, batches on the accelerated clock, counters (in the state).
- `keys`: where each API carries its key (and which API a request's key says it speaks).
- Leaves: `config` (`EmulatorConfig`, FAULTS), `jobs` (remote jobs' state machine, `JobQueue`), `media` (media
  objects with expiry), `faults` (markers and dice), `ratelimit`, `log`
  (`RequestRecord`), `images` (real image bytes, cheaply), `signatures` (Gemini thought signatures),
  `wire_errors` (each API's error shapes).
"""

from pixelmill.testing.config import FAULTS, MODIFIERS, EmulatorConfig
from pixelmill.testing.log import RequestRecord
from pixelmill.testing.server import Emulator, ThreadRunner, serve

__all__ = ["FAULTS", "MODIFIERS", "Emulator", "EmulatorConfig", "RequestRecord", "ThreadRunner", "serve"]
