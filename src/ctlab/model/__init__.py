"""The model: config dataclasses and presets, the decoder, MoE and MH-MoE, Hugging Face import/export."""
