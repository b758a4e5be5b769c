"""A feature cache deleted or moved after training (the run's hyperparams.yaml still names
it): reading it stops with every way on, not only "run the extraction"."""

import pytest

from crab.features import FeatureCache, FeatureCacheError


@pytest.mark.parametrize("made", [False, True], ids=["deleted", "left_without_index"])
def test_a_cache_that_is_gone_names_every_way_on(tmp_path, monkeypatch, made):
    monkeypatch.chdir(tmp_path)
    if made:
        (tmp_path / "exp" / "features").mkdir(parents=True)  # an extraction killed before its index
    with pytest.raises(FeatureCacheError) as err:
        FeatureCache("exp/features")
    message = str(err.value)
    assert (
        f"no feature cache at exp/features (index.json missing; a relative path is read from {tmp_path})"
        in message
    )
    assert "stage 4 with --feature_cache exp/features" in message
    assert "give the folder it was moved to (--feature_cache DIR)" in message
    assert '--train_opts "--feature_cache=null"' in message
