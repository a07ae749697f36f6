"""``python -m hardbatch`` (used by ``torchrun -m hardbatch``)."""

from hardbatch.app.cli.main import run

run()
