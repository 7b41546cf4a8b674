"""`python -m nmt train|translate|score ...`, the same as the nmt-* commands."""

from nmt.cli import main

main()
