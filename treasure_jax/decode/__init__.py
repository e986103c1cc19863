"""Generation: KV-cache decoding (`generate`, `forward`), samplers, the marker-list constraint
(`grammar`, `constraints`), stop strings (`stops`), marker modes (`modes`) and the CLI library
function (`runner.generate_cli`)."""
