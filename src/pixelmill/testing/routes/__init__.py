"""The emulator's routes, one module per API: `openai` (OpenAI and Azure OpenAI), `gemini`, and the remote-job
APIs `fal` (queue), `replicate`, `bfl`, plus `hf` (the Hugging Face router and dedicated endpoints).

Each module's `register(app, state)` adds its API's routes to the app and returns its handlers (the server wires
the one path two APIs share, `GET /v1/models`, from them). A route module imports the shared state, the request
sequence (`exchange`) and its API's validation, never another route module nor the server.
"""
