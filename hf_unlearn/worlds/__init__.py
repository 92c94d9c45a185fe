"""Tiny procedural worlds and their models, for benchmarks that need a model whose concepts can be told apart.

`scenes` renders the shape world and captions it; `models` builds its Stable Diffusion pipeline and judge; `train`
trains them in one command (`python -m hf_unlearn.worlds.train`); `prompts` holds the erasure benchmark's concepts.
The trained world is committed under `benchmark_results/world`.
"""
