from binclf.cli import main

main()
