"""DFT through ASE: presets, a runner that survives its jobs' failures, and ingest.

- :mod:`workbench.dft.presets`: named calculator settings (``load_preset``).
- :mod:`workbench.dft.runner`: queue, run, retry and re-queue calculations.
- :mod:`workbench.dft.job`: one attempt as its own process (kept light to import: this
  package's ``__init__`` imports nothing, so a job starts in well under a second).
- :mod:`workbench.dft.ingest` and :mod:`workbench.dft.outputs`: results to targets.
- :mod:`workbench.dft.references`: elemental references for formation energies.
- :mod:`workbench.dft.universal`: calculators of the universal potentials (SevenNet,
  CHGNet) whose weights ship in their packages.

Typical use::

    from workbench.dft.presets import load_preset
    from workbench.dft.runner import RunOptions, queue_calculations, run_queued, select_structures

    preset = load_preset("gpaw-fast")
    queue_calculations(engine, select_structures(engine, preset.name, every=True), preset)
    report = run_queued(engine, preset, RunOptions(workdir=settings.home / "dft"))
"""
