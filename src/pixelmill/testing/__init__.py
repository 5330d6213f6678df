"""pixelmill's API emulator: a loopback server that speaks the OpenAI, Azure OpenAI and Gemini image APIs.

    async with Emulator(latency=0.05, faults={"server_error": 0.1}) as emu:
        ... OpenAI(base_url=emu.openai_base_url, api_key="sk-test-x") ...

    with Emulator().run_in_thread() as emu:   # from sync code: own loop in a daemon thread
        ...

Routes: OpenAI `/v1/images/{generations,edits,variations}`, `/v1/models`; Azure
`/openai/deployments/{d}/images/{generations,edits}?api-version=` and `/openai/v1/images/...`; Gemini
`/{v1beta,v1alpha,v1}/models/{m}:generateContent` (and `:streamGenerateContent`); `/files/<id>.png` for
DALL·E url answers. Prompt markers force one request's fate: `[[fault:NAME]]` (any name in FAULTS, or
`thoughts`), `[[latency:SECONDS]]`.
"""

from pixelmill.testing.config import FAULTS, MODIFIERS, EmulatorConfig
from pixelmill.testing.log import RequestRecord
from pixelmill.testing.server import Emulator, ThreadRunner, serve

__all__ = ["FAULTS", "MODIFIERS", "Emulator", "EmulatorConfig", "RequestRecord", "ThreadRunner", "serve"]
