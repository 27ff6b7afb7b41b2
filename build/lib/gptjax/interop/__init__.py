"""Interop: Hugging Face GPT-2 weights in and out, and fine-tuning from them."""
