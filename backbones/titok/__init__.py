"""``titok``: TiTok's 1-D tokenizers and class-conditional generators (bytedance/1d-tokenizer,
Yu et al. 2024), the backbones of KA-MIG's TiTok rows."""
