"""The tiny models the package builds from configs and trains itself (offline, seconds to minutes on a CPU), for the
demos, the benchmarks, the attacks' end-to-end checks and the tests:

- `classifiers`: ResNet, ViT and Swin image classifiers for scikit-learn's bundled digits, and their training recipe;
- `diffusion`: a class-conditional UNet and DiT for the same digits, their scheduler and training recipe;
- `colour`: a Stable Diffusion pipeline taught one colour per prompt, its word tokenizer and its colour judge.

The shape world (`hf_unlearn.worlds`) is a benchmark of its own (scenes, prompts, judge, a committed trained world)
and stays in its package; it borrows the word tokenizer of `colour`.
"""
