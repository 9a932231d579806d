"""``python -m binclf``: the same command as the ``binclf`` console script."""

from binclf.main import main

main()
