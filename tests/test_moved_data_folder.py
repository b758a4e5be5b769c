"""A recipe's data/ (manifests, tokenizer) moved after training, with an absolute --data_dir
(rsynced from cluster scratch): stages 6-8 and a resumed stage 5 read it where it is now."""

import os

import pytest

from crab.runconfig import ConfigError, check_resume, load_run

RECIPE = """data_root: !PLACEHOLDER
data_folder: !PLACEHOLDER
output_folder: !PLACEHOLDER
save_folder: !ref <output_folder>/save
train_manifest: !ref <data_folder>/train.json
tokenizer_source: !ref <data_folder>/tokenizer
hidden_dim: 16
"""


@pytest.fixture
def run(tmp_path):
    """A run trained with data_folder /old/data/main (its saved file, references resolved)."""
    out = tmp_path / "exp" / "seed42"
    (out / "save" / "CKPT+2026-01-01+00-00-00+00").mkdir(parents=True)
    (out / "hyperparams.yaml").write_text(
        "data_root: /old/corpus\ndata_folder: /old/data/main\n"
        f"output_folder: {out}\nsave_folder: {out}/save\n"
        "train_manifest: /old/data/main/train.json\n"
        "tokenizer_source: /old/data/main/tokenizer\nhidden_dim: 16\n"
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    return recipe, out


def test_stages_6_to_8_read_the_data_folder_where_it_is_now(run):
    recipe, out = run
    _, _, _, hparams = load_run(
        [str(recipe), f"--output_folder={out}", "--data_root=/new/corpus", "--data_folder=/new/data/main"]
    )
    assert hparams["data_folder"] == "/new/data/main"
    assert hparams["tokenizer_source"] == "/new/data/main/tokenizer"
    assert hparams["train_manifest"] == "/new/data/main/train.json"
    # another setting is still one
    with pytest.raises(ConfigError, match="--hidden_dim=32 contradicts the run's hidden_dim: 16"):
        load_run([str(recipe), f"--output_folder={out}", "--data_folder=/new/data/main", "--hidden_dim=32"])


def test_a_resumed_training_reads_the_data_folder_where_it_is_now(run):
    recipe, out = run
    overrides = f"data_root: /new/corpus\ndata_folder: /new/data/main\noutput_folder: {out}\n"
    check_resume(str(recipe), overrides, str(out), os.path.join(out, "save"))  # no error
    with pytest.raises(ConfigError, match="hidden_dim: 16 then, 32 now"):
        check_resume(str(recipe), overrides + "hidden_dim: 32\n", str(out), os.path.join(out, "save"))
