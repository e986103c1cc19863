"""The Flax NNX decoder-only transformer, its sharding rules and Hugging Face import/export."""
