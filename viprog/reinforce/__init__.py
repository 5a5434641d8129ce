"""REINFORCE tuning of vision models with task rewards (Pinto et al., ICML 2023).

Pretrain a model by maximum likelihood, then optimise the task metric itself: sample n
outputs per image, score each with a reward, and raise the log-likelihood of the
better-than-average ones. Works for any model with `sample(x, n)` and `log_prob(x, y)`:
per-pixel categorical maps and autoregressive token sequences are provided.

- `rewards`: pure, batched rewards and metrics (detection reward, COCO mAP, IoU/mIoU,
  panoptic quality, colourfulness, CIDEr-D), cross-checked against their references.
- `tuner`: Algorithm 1 (MLE) and Algorithm 2 (reward step) with checkpoints and metrics.
- `models`: `PixelPolicy`, `SeqPolicy` and the pix2seq `BoxTokenizer`.
- `data`, `demos`, `captioning`, `vq`, `cli`: the shapes world, five demonstrations (`vq`:
  codes of a VQ-VAE trained in the demo, tuned through its frozen decoder), `viprog reinforce`.
"""
