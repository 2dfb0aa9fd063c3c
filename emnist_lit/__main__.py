from emnist_lit.cli import main

main()
