"""ASE calculators of universal interatomic potentials whose weights ship in their wheels.

The presets ``sevennet``, ``sevennet-l3i5`` and ``chgnet`` name these factories
(:data:`workbench.dft.presets.CALCULATOR_PATHS`); the job calls them with the preset's
parameters. Each refuses a model outside :data:`~workbench.dft.presets.OFFLINE_MODELS`
before its package could try to download one. torch and the model packages are imported
here only when a calculator is built, so importing this module stays cheap.
"""

from workbench.dft.presets import OFFLINE_MODELS, check_offline_model


def sevennet(model: str = OFFLINE_MODELS["sevennet"][0], device: str = "auto", **calculator_options):
    """SevenNet: energies at the level of its training set (raw MPtrj PBE/PBE+U, no
    MP2020 corrections), forces and stress."""
    check_offline_model("sevennet", model)
    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator(model=model, device=device, **calculator_options)


def chgnet(model: str = OFFLINE_MODELS["chgnet"][0], device: str = "auto", **calculator_options):
    """CHGNet: MP2020-corrected energies, forces, stress and per-site magnetic moments
    (magnitudes: CHGNet predicts no sign)."""
    check_offline_model("chgnet", model)
    from chgnet.model import CHGNet, CHGNetCalculator

    use_device = None if device == "auto" else device
    network = CHGNet.load(model_name=model, use_device=use_device, verbose=False)
    return CHGNetCalculator(model=network, use_device=use_device, **calculator_options)
