"""Request rules, one module per API: `openai` (OpenAI and Azure: the official schema, then the model table),
`gemini` (`generateContent`'s proto-JSON, then the model table and thought signatures). Each turns a request into
a job its route renders, or raises the API's own 400/404 answer; none reads the emulator's state or config."""
