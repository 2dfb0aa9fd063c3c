import sys

from emnist_lit.openmp_wait import prefer_passive_wait

prefer_passive_wait(sys.argv[1:])  # before anything imports torch

from emnist_lit.cli import main  # noqa: E402

main()
