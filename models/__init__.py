"""vid2vid networks and losses: pure ``nn.Module``s and functions (no ranks, DeepSpeed or files).

config (the ``model`` section, no torch) · warp (flow in pixels) · spade, layers (blocks) ·
scales (one coarse-to-fine scale) · generator (frame-by-frame generation, ``generate_clip``) ·
discriminators (image and temporal PatchGANs) · vgg (VGG19 features from a local file) ·
losses (each term) · objective (the weighted terms as dicts) · build (config -> networks).

Nothing is imported here, so ``import models.config`` stays free of torch for the CLI.
"""
