"""Stage 5: supervised fine-tuning and preference training (DPO, IPO, TDPO, SimPO) of chat models."""
