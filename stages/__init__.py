"""One thin script per DVC stage: parse params and paths, call the library, write outputs."""
