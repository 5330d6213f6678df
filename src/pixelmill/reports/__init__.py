"""Reports: what a user reads about a run (status, estimate, gallery, model listing, progress). They read the
journal and the model table; they never drive the engine."""
