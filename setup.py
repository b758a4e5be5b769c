from setuptools import find_packages, setup

setup(
    name="crab",
    version="0.1.0",
    description="Crab: bimodal speech emotion recognition with Multi Layer Contrastive Supervision",
    packages=find_packages(include=["crab", "crab.*"]),
    package_data={"crab": ["templates/*.yaml"]},  # the packaged model's hyperparams.yaml template
    python_requires=">=3.11",  # the pinned numpy and pandas; hashlib.file_digest
    # floors: the lowest releases the test suite passed with (Python 3.11, torch 2.13), for
    # installing crab into an environment of one's own; tools/requirements.txt pins the tested set
    install_requires=[
        "torch>=2.6",  # torch.load defaults to weights_only=True from 2.6 on
        "torchaudio",  # SpeechBrain imports it
        "speechbrain>=1.1.1",  # 1.1.0: no device_type for devices other than cpu and cuda
        "hyperpyyaml>=1.2.2",  # 1.2.0-1.2.1: !ref <model.tap_dims> fails with ruamel.yaml > 0.17.28
        "ruamel.yaml>=0.17.40,<0.19",  # what hyperpyyaml 1.2.2-1.2.3 work with (they declare more)
        "pyyaml",
        "transformers>=5.2",  # 5.0: the ASR pipeline's KeyError; 5.0-5.1: a config from an empty folder
        "sentencepiece>=0.2",  # 0.1.99: protobuf >= 4 refuses its model description
        "protobuf>=3.20",  # with sentencepiece: a tokenizer saved as a sentencepiece model alone (DeBERTa-v3)
        "packaging",
        "pandas>=2.1",
        "numpy>=1.26",
        "soundfile>=0.12.1",
        "soxr>=0.3.7",  # resampling whose memory does not grow with odd rates (crab.data.resample)
        "matplotlib>=3.7",
        "scikit-learn>=1.3",  # embeddings, layer probe (tests/test_metrics.py compares with 1.4)
        "scipy>=1.11",  # t quantiles, sign and Wilcoxon tests of crab.paired
    ],
    entry_points={"console_scripts": ["crab-infer=crab.bin.infer:main"]},
)
