"""Image editing through a cloud image API: DataFlow-MM's pipeline, on pixelmill.

    export DF_API_KEY=<your key>
    export DF_BASE_URL=<base URL>   # optional: Gemini https://generativelanguage.googleapis.com,
                                    # OpenAI https://api.openai.com/v1 (with or without /v1)
    python examples/dataflow/image_editing_api_pipeline.py \\
        --api_format gemini --model_name gemini-3-pro-image-preview --batch_size 8

Input: JSONL rows with `images` (a path or a list of paths; relative paths resolve against the input file's
folder) and `conversations`; several user messages make a multi-turn edit (Gemini: one chat; OpenAI: each turn
edits the previous result). Output: `{cache_path}/dataflow_cache_step_step1.jsonl` (every row, with
`output_image`, `output_image_error` and `pixelmill`), images in `{cache_path}/sample_{row}/`. Running the same
command again resumes: images already made are not paid for again.
"""

import argparse
import os
import sys
from pathlib import Path

from pixelmill.compat.dataflow import (
    APIImageGenServing,
    FileStorage,
    ImageIO,
    PromptedImageEditGenerator,
    StepAborted,
)

EXAMPLE_DATA = Path(__file__).resolve().parent / "data" / "image_edit_prompts.jsonl"
DEFAULT_MODELS = {"gemini": "gemini-3-pro-image-preview", "openai": "gpt-image-2"}
DEFAULT_URLS = {"gemini": "https://generativelanguage.googleapis.com", "openai": "https://api.openai.com/v1"}


class ImageEditingAPIPipeline:
    """Image editing. OpenAI format: gpt-image-2, gpt-image-1.5, gpt-image-1-mini, ... (several input images
    allowed); Gemini format: gemini-3-pro-image-preview, gemini-3.1-flash-image-preview, ..."""

    def __init__(
        self,
        api_format="gemini",
        model_name=None,
        batch_size=4,
        first_entry_file_name=None,
        cache_path="./cache_local/image_edit_api",
    ):
        if first_entry_file_name is None:
            first_entry_file_name = str(EXAMPLE_DATA)

        # -------- Storage --------
        self.storage = FileStorage(
            first_entry_file_name=first_entry_file_name,
            cache_path=cache_path,
            file_name_prefix="dataflow_cache_step",
            cache_type="jsonl",
        )

        if api_format not in ("gemini", "openai"):
            raise ValueError(f"Unsupported api_format: {api_format}; use 'gemini' or 'openai'")

        # -------- API --------
        api_key = os.environ.get("DF_API_KEY")
        if not api_key:
            raise ValueError("API key is required: set the environment variable DF_API_KEY")
        api_url = os.environ.get("DF_BASE_URL") or DEFAULT_URLS[api_format]

        # -------- Image editing service: batch_size requests in flight --------
        self.serving = APIImageGenServing(
            api_url=api_url,
            image_io=ImageIO(save_path=cache_path),  # images beside the step files, under --cache_path
            Image_gen_task="imageedit",
            batch_size=batch_size,
            api_format=api_format,
            model_name=model_name or DEFAULT_MODELS[api_format],
            api_key=api_key,
        )

        # -------- Operator --------
        self.image_edit_generator = PromptedImageEditGenerator(
            image_edit_serving=self.serving,
            save_interval=10,
        )

    def forward(self):
        self.image_edit_generator.run(
            storage=self.storage.step(),
            input_image_key="images",
            input_conversation_key="conversations",
            output_image_key="output_image",
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Cloud API image editing pipeline (DataFlow-MM's, on pixelmill)")
    parser.add_argument("--api_format", choices=["gemini", "openai"], default="gemini",
                        help="API format: gemini (Google Gemini) or openai (OpenAI or a compatible server)")
    parser.add_argument("--model_name", type=str, default=None,
                        help="model name (default: gemini-3-pro-image-preview for gemini, gpt-image-2 for openai)")
    parser.add_argument("--batch_size", type=int, default=4, help="requests in flight")
    parser.add_argument("--first_entry_file_name", type=str, default=None,
                        help=f"input JSONL (default: the example data, {EXAMPLE_DATA.name})")
    parser.add_argument("--cache_path", type=str, default="./cache_local/image_edit_api",
                        help="where the step files, images and the resumable journal go")
    args = parser.parse_args()

    if not os.environ.get("DF_API_KEY"):
        parser.error("the environment variable DF_API_KEY is not set: export DF_API_KEY=<your API key>")

    pipeline = ImageEditingAPIPipeline(
        api_format=args.api_format,
        model_name=args.model_name,
        batch_size=args.batch_size,
        first_entry_file_name=args.first_entry_file_name,
        cache_path=args.cache_path,
    )
    try:
        pipeline.forward()
    except StepAborted as exc:  # authentication, quota, budget or Ctrl-C: what was done is kept
        sys.stderr.write(f"stopped: {exc}\n")
        sys.exit(3)
