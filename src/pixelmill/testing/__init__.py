"""pixelmill's API emulator: a loopback server that speaks the OpenAI, Azure OpenAI and Gemini image APIs.

    async with Emulator(latency=0.05, faults={"server_error": 0.1}) as emu:
        ... OpenAI(base_url=emu.openai_base_url, api_key="sk-test-x") ...

    with Emulator().run_in_thread() as emu:   # from sync code
        ...

Prompt markers force one request's fate: `[[fault:moderation]]`, `[[latency:0.5]]`, `[[fault:thoughts]]`.
"""

from pixelmill.testing.config import FAULTS, MODIFIERS, EmulatorConfig
from pixelmill.testing.log import RequestRecord
from pixelmill.testing.server import Emulator, ThreadRunner, serve

__all__ = ["FAULTS", "MODIFIERS", "Emulator", "EmulatorConfig", "RequestRecord", "ThreadRunner", "serve"]
