"""Each API's success answers, built from a validated job: `openai` (GPT image `ImagesResponse` bodies and
usage), `gemini` (`GenerateContentResponse` bodies, refusals included). Below the routes, beside `validation/`:
the synchronous routes and the batch routes answer a job the same way, and route modules never import each
other."""
