"""``python -m binclf``: the same command as the ``binclf`` console script."""

from binclf.command import main

main()
