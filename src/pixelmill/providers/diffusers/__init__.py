"""Local diffusers models, behind the optional extra `pixelmill[local]`.

- `families`: which pipeline classes serve a model (read from its `model_index.json`) and the rules that
  follow (size multiple, negative prompts, guidance); pure data, no torch.
- `options`: the provider's settings (batch size, devices, dtype, memory options), validated.
- `loader`: one model copy per device through the real `from_pretrained`, with the memory options.
- `execute`: one pipeline call for a batch of rows on one device: per-image generators, out-of-memory
  fallback to single rows, refused (NaN, black, flagged) images.
- `batcher`: concurrent `call`s grouped by identical parameters into batches, one call at a time per device.

`pixelmill.providers.diffusers.provider.DiffusersProvider` puts them together behind the provider contract.
"""
