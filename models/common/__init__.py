"""What several model families share: activations and the folded transformer, checkpoint files,
Hugging Face files, text and image data, TransformerLens weight processing."""
