"""DataFlow-MM's image generation interface, on pixelmill's engine: `FileStorage`, `ImageIO`,
`APIImageGenServing` (cloud APIs), `LocalImageGenServing` (diffusers models, extra `pixelmill[local]`),
`PromptedImageGenerator` and `PromptedImageEditGenerator`.

Pipelines written for DataFlow-MM run after changing only their imports:

```python
from pixelmill.compat.dataflow import (APIImageGenServing, FileStorage, ImageIO, PromptedImageEditGenerator,
                                       PromptedImageGenerator)

storage = FileStorage(first_entry_file_name="prompts.jsonl", cache_path="./cache_local/text2image_api",
                      file_name_prefix="dataflow_cache_step", cache_type="jsonl")
serving = APIImageGenServing(api_url="https://api.openai.com/v1", image_io=ImageIO(save_path="./cache_local/img"),
                             Image_gen_task="text2image", batch_size=16, api_format="openai",
                             model_name="gpt-image-2", api_key=os.environ["DF_API_KEY"])
PromptedImageGenerator(t2i_serving=serving, save_interval=10).run(
    storage=storage.step(), input_conversation_key="conversations", output_image_key="images")
```

What changes underneath (DataFlow's faults are not kept):
- `batch_size` is the number of requests in flight (DataFlow sent one at a time); 429s, 5xx, timeouts and
  resets are retried with backoff; authentication, quota and budget errors stop the run at once.
- Re-running the same script resumes: requests done in an earlier run are never sent again (the journal lives
  in `{cache_path}/.pixelmill/`); changing the model or its parameters starts a fresh run beside the old one.
- Every row is in the output: a failed row has `[]` in the output column, its error in `<output key>_error`,
  and every row has a `pixelmill` column (cost, usage, parameters sent, attempts, errors).
- `save_interval`: finished requests between two writes of the step's output file while the run goes (at most
  every few seconds); nothing is lost in between: the journal keeps every finished request.
- Images keep their real format and transparency (`.jpg` for a JPEG) and are written atomically;
  `{save_path}/{key}/{key}_{i}.{ext}` as DataFlow named them.
- The OpenAI base URL works with or without `/v1`; nothing unsupported is sent to gpt-image models.
"""

from pixelmill.compat.dataflow.imageio import ImageIO
from pixelmill.compat.dataflow.local_serving import LocalImageGenServing
from pixelmill.compat.dataflow.operators import PromptedImageEditGenerator, PromptedImageGenerator
from pixelmill.compat.dataflow.serving import APIImageGenServing
from pixelmill.compat.dataflow.step_run import StepAborted, StepResult
from pixelmill.compat.dataflow.storage import DataFlowConfigError, FileStorage

__all__ = [
    "APIImageGenServing",
    "DataFlowConfigError",
    "FileStorage",
    "ImageIO",
    "LocalImageGenServing",
    "PromptedImageEditGenerator",
    "PromptedImageGenerator",
    "StepAborted",
    "StepResult",
]
