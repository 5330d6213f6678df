"""Reading: the sources (records), the prompts and conversations in them, and their input images."""
