"""Compatibility layers: other tools' Python interfaces, run on pixelmill's engine.

- `pixelmill.compat.dataflow`: DataFlow-MM's image generation classes (`FileStorage`, `ImageIO`,
  `APIImageGenServing`, `PromptedImageGenerator`, `PromptedImageEditGenerator`), so that pipelines written
  for it run after changing only their imports.
"""
