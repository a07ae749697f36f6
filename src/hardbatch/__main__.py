"""``python -m hardbatch`` (used by ``torchrun -m hardbatch``)."""

from hardbatch.cli.main import run

run()
