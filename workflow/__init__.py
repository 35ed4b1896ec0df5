"""What the trainers (train/) and evaluators (eval/) share, outside the library.

Run folders and checkpoints (``runs``), config dataclasses as command lines
(``configs``), metric writers (``writers``), the log format (``logs``), the
figures of the trainers' reports and the evaluators (``figures``) and the
one-line user errors of every entry point (``errors``). It runs from a
checkout of the repository, like ``train/`` and ``eval/``; ``pip install
vae-attn`` installs only the library ``vae_attn``.
"""
