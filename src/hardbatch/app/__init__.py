"""The hardbatch application: the ``hardbatch`` command line, ``demo`` and ``experiment``.

Everything here sits on top of the library (``hardbatch.data``, ``embed``, ``graph``, ``mining``,
``samplers``, ``losses``, ``train``, ``evaluate``) and may import any of it; the library never imports
this package (checked by the import contracts in ``pyproject.toml``, run by ``make lint`` and CI).
"""
