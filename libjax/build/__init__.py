"""libjax.build.pipeline.pipeline."""
