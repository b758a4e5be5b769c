from setuptools import find_packages, setup

setup(
    name="crab",
    version="0.1.0",
    description="Crab: bimodal speech emotion recognition with Multi Layer Contrastive Supervision",
    packages=find_packages(include=["crab", "crab.*"]),
    package_data={"crab": ["templates/*.yaml"]},  # the packaged model's hyperparams.yaml template
    python_requires=">=3.11",  # the pinned numpy and pandas; hashlib.file_digest
    install_requires=[
        "torch>=2.6",  # torch.load defaults to weights_only=True from 2.6 on
        "torchaudio",
        "speechbrain>=1.1",
        "hyperpyyaml>=1.2",
        "transformers>=5",
        "sentencepiece",
        "protobuf",  # with sentencepiece: a tokenizer saved as a sentencepiece model alone (DeBERTa-v3)
        "pandas",
        "numpy",
        "soundfile",
        "soxr",  # resampling whose memory does not grow with odd rates (crab.data.resample)
        "matplotlib",
        "scikit-learn",
        "scipy",  # t quantiles, sign and Wilcoxon tests of crab.paired
    ],
    entry_points={"console_scripts": ["crab-infer=crab.bin.infer:main"]},
)
