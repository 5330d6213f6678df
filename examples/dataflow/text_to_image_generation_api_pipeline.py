"""Text-to-image through a cloud image API: DataFlow-MM's pipeline, on pixelmill.

    export DF_API_KEY=<your key>
    export DF_BASE_URL=<base URL>   # optional: Gemini https://generativelanguage.googleapis.com,
                                    # OpenAI https://api.openai.com/v1 (with or without /v1)
    python examples/dataflow/text_to_image_generation_api_pipeline.py \\
        --api_format openai --model_name gpt-image-2 --batch_size 8

Input: JSONL rows with `conversations` (a list of {role, content}); each user message gives one image.
Output: `{cache_path}/dataflow_cache_step_step1.jsonl` (every row, with `images`, `images_error` and
`pixelmill`), images in `{cache_path}/sample{row}_condition{j}/`. Running the same command again resumes:
images already made are not paid for again.
"""

import argparse
import os
import sys
from pathlib import Path

from pixelmill.compat.dataflow import (
    APIImageGenServing,
    FileStorage,
    ImageIO,
    PromptedImageGenerator,
    StepAborted,
)

EXAMPLE_DATA = Path(__file__).resolve().parent / "data" / "text2image_prompts.jsonl"
DEFAULT_MODELS = {"gemini": "gemini-3-pro-image-preview", "openai": "gpt-image-2"}
DEFAULT_URLS = {"gemini": "https://generativelanguage.googleapis.com", "openai": "https://api.openai.com/v1"}


class ImageGenerationAPIPipeline:
    """Text-to-image. OpenAI format: gpt-image-2, gpt-image-1.5, gpt-image-1-mini, ...;
    Gemini format: gemini-3-pro-image-preview, gemini-3.1-flash-image-preview, ..."""

    def __init__(
        self,
        api_format="gemini",
        model_name=None,
        batch_size=4,
        first_entry_file_name=None,
        cache_path="./cache_local/text2image_api",
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

        # -------- API --------
        api_key = os.environ.get("DF_API_KEY")
        if not api_key:
            raise ValueError("API key is required: set the environment variable DF_API_KEY")
        api_url = os.environ.get("DF_BASE_URL") or DEFAULT_URLS[api_format]

        # -------- Image generation service: batch_size requests in flight --------
        self.serving = APIImageGenServing(
            api_url=api_url,
            image_io=ImageIO(save_path=cache_path),  # images beside the step files, under --cache_path
            Image_gen_task="text2image",
            batch_size=batch_size,
            api_format=api_format,
            model_name=model_name or DEFAULT_MODELS[api_format],
            api_key=api_key,
        )

        # -------- Operator --------
        self.text_to_image_generator = PromptedImageGenerator(
            t2i_serving=self.serving,
            save_interval=10,
        )

    def forward(self):
        self.text_to_image_generator.run(
            storage=self.storage.step(),
            input_conversation_key="conversations",
            output_image_key="images",
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Cloud API text-to-image pipeline (DataFlow-MM's, on pixelmill)")
    parser.add_argument("--api_format", choices=["gemini", "openai"], default="gemini",
                        help="API format: gemini (Google Gemini) or openai (OpenAI or a compatible server)")
    parser.add_argument("--model_name", type=str, default=None,
                        help="model name (default: gemini-3-pro-image-preview for gemini, gpt-image-2 for openai)")
    parser.add_argument("--batch_size", type=int, default=4, help="requests in flight")
    parser.add_argument("--first_entry_file_name", type=str, default=None,
                        help=f"input JSONL (default: the example data, {EXAMPLE_DATA.name})")
    parser.add_argument("--cache_path", type=str, default="./cache_local/text2image_api",
                        help="where the step files, images and the resumable journal go")
    args = parser.parse_args()

    if not os.environ.get("DF_API_KEY"):
        parser.error("the environment variable DF_API_KEY is not set: export DF_API_KEY=<your API key>")

    pipeline = ImageGenerationAPIPipeline(
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
