"""Writing: image files (store), the journal, and the output dataset in each format."""
